"""Task registry: one frozen `TaskSpec` per supported downstream task.

A spec says everything the input pipeline and the evaluator need to know about a
task and nothing about models: what kind of prediction it asks for, its label set,
which metrics to report and which one picks the best checkpoint, where its files
live in the original GLUE / CoNLL / SQuAD layouts, and its TFDS name.

Split names are TFDS-style: 'train', 'validation', 'test' (MNLI also has
'validation_matched', 'validation_mismatched', 'test_matched', 'test_mismatched';
for 'mnli' plain 'validation' means matched).

Example:
  >>> spec = get_task('sst2')
  >>> spec.kind, spec.label_names, spec.main_metric
  ('classification', ('negative', 'positive'), 'accuracy')
  >>> spec.file_name('validation')
  'dev.tsv'
"""

import dataclasses
from typing import Optional

KINDS = ('classification', 'regression', 'tagging', 'span')

CONLL_NER_TAGS = ('O', 'B-PER', 'I-PER', 'B-ORG', 'I-ORG', 'B-LOC', 'I-LOC',
                  'B-MISC', 'I-MISC')


@dataclasses.dataclass(frozen=True)
class TsvColumns:
  """Column positions of one GLUE TSV layout (negative = counted from the end).

  Attributes:
    text_a: column of the first text.
    text_b: column of the second text, or None for single-sentence tasks.
    label: column of the label, or None for unlabelled (test) files.
    header: whether the first line is a header (CoLA train/dev have none).
    num_columns: expected column count for files without a header; files with
      a header must have as many columns as the header on every row.
  """
  text_a: int
  text_b: Optional[int] = None
  label: Optional[int] = None
  header: bool = True
  num_columns: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Static description of a task.

  Attributes:
    name: registry key, e.g. 'sst2'.
    kind: one of KINDS.
    text_fields: TFDS feature names of the one or two input texts.
    label_names: class / tag names in label-index order (empty for regression
      and span tasks). The order equals TFDS' ClassLabel order.
    metrics: metric names understood by `research.evaluate.metrics.compute`.
    main_metric: the metric that selects the best checkpoint (higher is better).
    folder: folder name in a local data directory ('SST-2', 'conll2003', ...).
    files: (split, file name) pairs inside `folder`.
    columns: TSV layout of labelled GLUE files (None for non-TSV tasks).
    test_columns: TSV layout of the unlabelled GLUE test file.
    tsv_labels: label strings as written in the TSV, in label-index order.
    tfds_name: name for `tfds.load`, e.g. 'glue/sst2'.
    tfds_splits: (split, TFDS split) pairs where the names differ.
  """
  name: str
  kind: str
  text_fields: tuple[str, ...]
  label_names: tuple[str, ...]
  metrics: tuple[str, ...]
  main_metric: str
  folder: str
  files: tuple[tuple[str, str], ...]
  tfds_name: str
  columns: Optional[TsvColumns] = None
  test_columns: Optional[TsvColumns] = None
  tsv_labels: tuple[str, ...] = ()
  tfds_splits: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'task {self.name!r}: kind {self.kind!r} not in {KINDS}')
    if self.main_metric not in self.metrics:
      raise ValueError(f'task {self.name!r}: main_metric {self.main_metric!r} '
                       f'is not one of its metrics {self.metrics}')
    if not 1 <= len(self.text_fields) <= 2:
      raise ValueError(f'task {self.name!r}: needs one or two text fields')

  @property
  def num_labels(self) -> int:
    """Number of output units a head needs (1 for regression, 0 for span)."""
    return 1 if self.kind == 'regression' else len(self.label_names)

  @property
  def is_pair(self) -> bool:
    """True if an example has two texts (text_a and text_b)."""
    return len(self.text_fields) == 2

  @property
  def splits(self) -> tuple[str, ...]:
    """Split names with a local file."""
    return tuple(split for split, _ in self.files)

  def file_name(self, split: str) -> str:
    """Returns the local file name of `split`.

    Raises:
      ValueError: if the task has no such split.
    """
    for name, file_name in self.files:
      if name == split:
        return file_name
    raise ValueError(f'task {self.name!r} has no split {split!r}; '
                     f'known splits: {list(self.splits)}')

  def tfds_split(self, split: str) -> str:
    """Returns the TFDS split name for our `split` name."""
    self.file_name(split)  # Validates the split name.
    return dict(self.tfds_splits).get(split, split)


def _glue_files(dev='dev.tsv', test='test.tsv'):
  return (('train', 'train.tsv'), ('validation', dev), ('test', test))


_BINARY = ('0', '1')
_NLI3 = ('entailment', 'neutral', 'contradiction')
_NLI2 = ('entailment', 'not_entailment')
_MNLI_COLS = TsvColumns(text_a=8, text_b=9, label=-1)
_MNLI_TEST_COLS = TsvColumns(text_a=8, text_b=9)


def _mnli(name: str, dev: str, test: str, extra_splits=()) -> TaskSpec:
  tfds_dev = {'dev_matched.tsv': 'validation_matched',
              'dev_mismatched.tsv': 'validation_mismatched'}[dev]
  return TaskSpec(
      name=name, kind='classification', text_fields=('premise', 'hypothesis'),
      label_names=_NLI3, metrics=('accuracy',), main_metric='accuracy',
      folder='MNLI', files=_glue_files(dev, test) + extra_splits,
      columns=_MNLI_COLS, test_columns=_MNLI_TEST_COLS, tsv_labels=_NLI3,
      tfds_name='glue/mnli',
      tfds_splits=(('validation', tfds_dev),
                   ('test', tfds_dev.replace('validation', 'test'))))


_SPECS = (
    TaskSpec(
        name='cola', kind='classification', text_fields=('sentence',),
        label_names=('unacceptable', 'acceptable'),
        metrics=('matthews_corr', 'accuracy'), main_metric='matthews_corr',
        folder='CoLA', files=_glue_files(),
        columns=TsvColumns(text_a=3, label=1, header=False, num_columns=4),
        test_columns=TsvColumns(text_a=1), tsv_labels=_BINARY,
        tfds_name='glue/cola'),
    TaskSpec(
        name='sst2', kind='classification', text_fields=('sentence',),
        label_names=('negative', 'positive'), metrics=('accuracy',),
        main_metric='accuracy', folder='SST-2', files=_glue_files(),
        columns=TsvColumns(text_a=0, label=1),
        test_columns=TsvColumns(text_a=1), tsv_labels=_BINARY,
        tfds_name='glue/sst2'),
    TaskSpec(
        name='mrpc', kind='classification',
        text_fields=('sentence1', 'sentence2'),
        label_names=('not_equivalent', 'equivalent'),
        metrics=('f1', 'accuracy'), main_metric='f1', folder='MRPC',
        files=_glue_files(), columns=TsvColumns(text_a=3, text_b=4, label=0),
        test_columns=TsvColumns(text_a=3, text_b=4), tsv_labels=_BINARY,
        tfds_name='glue/mrpc'),
    TaskSpec(
        name='stsb', kind='regression', text_fields=('sentence1', 'sentence2'),
        label_names=(), metrics=('pearson', 'spearman'),
        main_metric='spearman', folder='STS-B', files=_glue_files(),
        columns=TsvColumns(text_a=7, text_b=8, label=9),
        test_columns=TsvColumns(text_a=7, text_b=8), tfds_name='glue/stsb'),
    TaskSpec(
        name='qqp', kind='classification',
        text_fields=('question1', 'question2'),
        label_names=('not_duplicate', 'duplicate'),
        metrics=('f1', 'accuracy'), main_metric='f1', folder='QQP',
        files=_glue_files(), columns=TsvColumns(text_a=3, text_b=4, label=5),
        test_columns=TsvColumns(text_a=1, text_b=2), tsv_labels=_BINARY,
        tfds_name='glue/qqp'),
    _mnli('mnli', 'dev_matched.tsv', 'test_matched.tsv', extra_splits=(
        ('validation_matched', 'dev_matched.tsv'),
        ('validation_mismatched', 'dev_mismatched.tsv'),
        ('test_matched', 'test_matched.tsv'),
        ('test_mismatched', 'test_mismatched.tsv'))),
    _mnli('mnli_matched', 'dev_matched.tsv', 'test_matched.tsv'),
    _mnli('mnli_mismatched', 'dev_mismatched.tsv', 'test_mismatched.tsv'),
    TaskSpec(
        name='qnli', kind='classification',
        text_fields=('question', 'sentence'),
        label_names=_NLI2, metrics=('accuracy',), main_metric='accuracy',
        folder='QNLI', files=_glue_files(),
        columns=TsvColumns(text_a=1, text_b=2, label=3),
        test_columns=TsvColumns(text_a=1, text_b=2), tsv_labels=_NLI2,
        tfds_name='glue/qnli'),
    TaskSpec(
        name='rte', kind='classification',
        text_fields=('sentence1', 'sentence2'), label_names=_NLI2,
        metrics=('accuracy',), main_metric='accuracy', folder='RTE',
        files=_glue_files(), columns=TsvColumns(text_a=1, text_b=2, label=3),
        test_columns=TsvColumns(text_a=1, text_b=2), tsv_labels=_NLI2,
        tfds_name='glue/rte'),
    TaskSpec(
        name='wnli', kind='classification',
        text_fields=('sentence1', 'sentence2'),
        label_names=('not_entailment', 'entailment'), metrics=('accuracy',),
        main_metric='accuracy', folder='WNLI', files=_glue_files(),
        columns=TsvColumns(text_a=1, text_b=2, label=3),
        test_columns=TsvColumns(text_a=1, text_b=2), tsv_labels=_BINARY,
        tfds_name='glue/wnli'),
    TaskSpec(
        name='conll2003', kind='tagging', text_fields=('tokens',),
        label_names=CONLL_NER_TAGS,
        metrics=('entity_f1', 'entity_precision', 'entity_recall'),
        main_metric='entity_f1', folder='conll2003',
        files=(('train', 'train.txt'), ('validation', 'valid.txt'),
               ('test', 'test.txt')),
        tfds_name='conll2003', tfds_splits=(('validation', 'dev'),)),
    TaskSpec(
        name='squad', kind='span', text_fields=('question', 'context'),
        label_names=(), metrics=('exact_match', 'squad_f1'),
        main_metric='squad_f1', folder='squad',
        files=(('train', 'train-v1.1.json'), ('validation', 'dev-v1.1.json')),
        tfds_name='squad/v1.1'),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
GLUE_TASKS = ('cola', 'sst2', 'mrpc', 'stsb', 'qqp', 'mnli', 'qnli', 'rte',
              'wnli')


def get_task(name: str) -> TaskSpec:
  """Returns the spec registered under `name` (case-insensitive).

  Args:
    name: a task name such as 'sst2', 'mnli_mismatched', 'conll2003', 'squad'.

  Returns:
    The frozen `TaskSpec`.

  Raises:
    ValueError: for an unknown name; the message lists the known names.
  """
  spec = TASKS.get(str(name).lower().replace('-', ''))
  if spec is None:
    raise ValueError(f'unknown task name {name!r}; known tasks: '
                     f'{", ".join(sorted(TASKS))}')
  return spec
