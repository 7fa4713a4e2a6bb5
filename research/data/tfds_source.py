"""Reads a task split through TensorFlow Datasets, in the local readers' schema.

`tensorflow_datasets` is imported inside the functions, so the rest of
`research.data` works without it. TFDS needs TensorFlow to register, download and
prepare GLUE, CoNLL-2003 and SQuAD: install the project's `tfds` extra
(`pip install -e '.[tfds]'`: TensorFlow CPU and `importlib_resources`). Two TFDS
access paths are supported:

  * 'tf': `tfds.load(...)` + `tfds.as_numpy` (needs TensorFlow; reads datasets
    prepared in the default TFRecord format);
  * 'data_source': `tfds.data_source(...)` (no TensorFlow; needs datasets
    prepared in ArrayRecord format).

'auto' uses 'tf' when TensorFlow is importable and 'data_source' otherwise.

Examples come out in TFDS' stored order, which is not the original file order
(TFDS shuffles at preparation); GLUE examples keep their original 'idx'.

Example:
  >>> examples = read_tfds(tasks.get_task('sst2'), 'validation')
  >>> sorted(examples[0])
  ['idx', 'label', 'text_a']
"""

import importlib
import importlib.util
from typing import Any, Iterable, Optional

import numpy as np

from research.data import tasks

# TFDS builders that are only registered once their module is imported (their
# package-level registration fails without TensorFlow).
_BUILDER_MODULES = {
    'glue': 'tensorflow_datasets.text.glue',
    'conll2003': 'tensorflow_datasets.text.conll2003',
}
READERS = ('auto', 'tf', 'data_source')


def import_tfds():
  """Imports tensorflow_datasets and registers the builders this repo uses.

  Returns:
    The `tensorflow_datasets` module.

  Raises:
    ImportError: if tensorflow_datasets is not installed.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('tensorflow_datasets is not installed: '
                      '`pip install tensorflow-datasets`') from e
  for module in _BUILDER_MODULES.values():
    try:
      importlib.import_module(module)
    except ImportError:
      pass
  return tfds


def has_tensorflow() -> bool:
  """Whether TensorFlow is importable (TFDS needs it to prepare most datasets)."""
  return importlib.util.find_spec('tensorflow') is not None


def _records(spec: tasks.TaskSpec, split: str, data_dir: Optional[str],
             download: bool, reader: str) -> Iterable[dict]:
  """Yields raw TFDS records (numpy values) of one split."""
  if reader not in READERS:
    raise ValueError(f'reader must be one of {READERS}, got {reader!r}')
  tfds = import_tfds()
  tfds_split = spec.tfds_split(split)
  if reader == 'auto':
    reader = 'tf' if has_tensorflow() else 'data_source'
  if reader == 'tf':
    dataset = tfds.load(spec.tfds_name, split=tfds_split, data_dir=data_dir,
                        download=download, shuffle_files=False)
    return tfds.as_numpy(dataset)
  source = tfds.data_source(spec.tfds_name, split=tfds_split,
                            data_dir=data_dir, download=download)
  return (source[i] for i in range(len(source)))


def read_tfds(spec: tasks.TaskSpec, split: str, data_dir: Optional[str] = None,
              download: bool = True, reader: str = 'auto') -> list[dict]:
  """Reads a split from TFDS and converts it to the local readers' schema.

  Args:
    spec: the task spec (its `tfds_name` and `tfds_splits` are used).
    split: our split name ('train', 'validation', ...).
    data_dir: TFDS data directory (None: TFDS' default).
    download: let TFDS download and prepare the data if it is missing.
    reader: 'auto', 'tf' or 'data_source' (see the module docstring).

  Returns:
    Example dicts: {'idx', 'text_a', ['text_b'], 'label'} for GLUE,
    {'idx', 'tokens', 'tags'} for tagging and {'id', 'title', 'question',
    'context', 'answers'} for SQuAD.

  Raises:
    ImportError: if tensorflow_datasets is missing.
    ValueError: for an unknown split or a record with mismatched tokens/tags.
    Anything TFDS raises when the dataset cannot be found or downloaded.
  """
  records = _records(spec, split, data_dir, download, reader)
  if spec.kind == 'tagging':
    return [_tagging(spec, record, i) for i, record in enumerate(records)]
  if spec.kind == 'span':
    return [_span(record) for record in records]
  return [_classification(spec, record, split) for record in records]


def _str(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):
    return value.decode('utf-8')
  return str(value)


def _classification(spec: tasks.TaskSpec, record: dict, split: str) -> dict:
  example = {'idx': int(record['idx']),
             'text_a': _str(record[spec.text_fields[0]])}
  if spec.is_pair:
    example['text_b'] = _str(record[spec.text_fields[1]])
  label = np.asarray(record['label']).item()
  example['label'] = float(label) if spec.kind == 'regression' else int(label)
  return example


def _tagging(spec: tasks.TaskSpec, record: dict, position: int) -> dict:
  tokens = [_str(token) for token in record['tokens']]
  tags = [int(tag) for tag in record['ner']]
  if len(tokens) != len(tags):
    raise ValueError(f'{spec.tfds_name} record {position}: {len(tokens)} '
                     f'tokens but {len(tags)} NER tags')
  return {'idx': position, 'tokens': tokens, 'tags': tags}


def _span(record: dict) -> dict:
  answers = record['answers']
  return {'id': _str(record['id']), 'title': _str(record['title']),
          'question': _str(record['question']),
          'context': _str(record['context']),
          'answers': {'text': [_str(t) for t in answers['text']],
                      'answer_start': [int(s) for s in
                                       answers['answer_start']]}}
