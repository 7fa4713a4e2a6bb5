"""Reader for GLUE tasks in their original TSV layout (the GLUE download).

Each row becomes one example dict with the common classification schema:

  {'idx': int, 'text_a': str, 'text_b': str (pair tasks only), 'label': ...}

where 'label' is the class index (int) in `TaskSpec.label_names` order, or the
score (float) for regression; unlabelled test rows get -1 / -1.0 like TFDS. 'idx' is
the 0-based row position after the header, which is what TFDS uses as 'idx'.

The files are read with `csv.QUOTE_NONE` because GLUE texts contain unbalanced
quotes, and with the 'utf-8-sig' codec because MRPC's header starts with a BOM.
Texts are kept verbatim (SST-2 has a trailing space before the tab, as in TFDS).

Example:
  >>> spec = tasks.get_task('sst2')
  >>> examples = list(read_glue_tsv('/data/glue/SST-2/dev.tsv', spec))
  >>> examples[0]
  {'idx': 0, 'text_a': "it 's a charming and often affecting journey . ", 'label': 1}
"""

import csv
import logging
import math
from typing import Iterator

from research.data import tasks
from research.data.errors import DataFormatError, PathLike


def read_glue_tsv(path: PathLike, spec: tasks.TaskSpec, labelled: bool = True,
                  strict: bool = True) -> Iterator[dict]:
  """Yields the examples of one GLUE TSV file.

  Args:
    path: the .tsv file.
    spec: the task spec; it gives the column layout and label strings.
    labelled: True for train/dev files; False for the unlabelled test files,
      which use `spec.test_columns` and get label -1 (-1.0 for regression).
    strict: if True, the first malformed row raises; if False, malformed rows
      (wrong column count, unknown label, empty text) are skipped and counted in
      a logged warning.

  Yields:
    Example dicts {'idx', 'text_a', ['text_b'], 'label'}.

  Raises:
    ValueError: if the task has no TSV layout.
    FileNotFoundError: if `path` does not exist.
    DataFormatError: for a malformed row (message has 'file:line').
  """
  layout = spec.columns if labelled else spec.test_columns
  if layout is None:
    raise ValueError(f'task {spec.name!r} is not a GLUE TSV task')
  skipped = 0
  with open(path, encoding='utf-8-sig', newline='') as f:
    reader = csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
    num_columns = layout.num_columns
    if layout.header:
      header = next(reader, None)
      if header is None:
        raise DataFormatError(path, 'file is empty, expected a header line', 1)
      num_columns = len(header)
    idx = 0
    for row in reader:
      try:
        example = _parse_row(row, num_columns, layout, spec, labelled)
      except ValueError as e:
        if strict:
          raise DataFormatError(path, str(e), reader.line_num) from None
        skipped += 1
        continue
      example['idx'] = idx
      idx += 1
      yield example
  if skipped:
    logging.warning('%s: skipped %d malformed rows', path, skipped)


def _parse_row(row: list[str], num_columns: int, layout: tasks.TsvColumns,
               spec: tasks.TaskSpec, labelled: bool) -> dict:
  """Turns one split TSV row into an example (without 'idx')."""
  if num_columns is not None and len(row) != num_columns:
    raise ValueError(f'expected {num_columns} tab-separated columns, got '
                     f'{len(row)}')
  example = {'text_a': _text(row, layout.text_a, 'text_a')}
  if layout.text_b is not None:
    example['text_b'] = _text(row, layout.text_b, 'text_b')
  example['label'] = _label(row[layout.label], spec) if labelled else (
      -1.0 if spec.kind == 'regression' else -1)
  return example


def _text(row: list[str], column: int, field: str) -> str:
  text = row[column]
  if not text.strip():
    raise ValueError(f'empty text in column {column} ({field})')
  return text


def _label(raw: str, spec: tasks.TaskSpec):
  """Parses a label string into a class index or a float score."""
  raw = raw.strip()
  if spec.kind == 'regression':
    try:
      value = float(raw)
    except ValueError:
      raise ValueError(f'label {raw!r} is not a number') from None
    if not math.isfinite(value):
      raise ValueError(f'label {raw!r} is not finite')
    return value
  try:
    return spec.tsv_labels.index(raw)
  except ValueError:
    raise ValueError(f'label {raw!r} not in the label set '
                     f'{list(spec.tsv_labels)} of task {spec.name!r}') from None


def write_glue_tsv(path: PathLike, spec: tasks.TaskSpec, examples) -> int:
  """Writes labelled examples as a TSV file that `read_glue_tsv(path, spec)` reads back.

  The columns follow the task's train/dev layout (other columns stay empty); tabs and
  line breaks inside texts become spaces, since the format cannot hold them. Used to
  hand the trainer a new train split (augmented data, for instance) in the task's own
  format. Returns the number of rows written.

  Raises:
    ValueError: the task has no TSV layout, or a label outside its label set.
  """
  layout = spec.columns
  if layout is None:
    raise ValueError(f'task {spec.name!r} is not a GLUE TSV task')
  places = [c for c in (layout.text_a, layout.text_b, layout.label) if c is not None]
  width = layout.num_columns or (max(c + 1 for c in places if c >= 0)
                                 + max([-c for c in places if c < 0], default=0))
  names = {'text_a': layout.text_a, 'text_b': layout.text_b, 'label': layout.label}
  names = {k: (v % width) for k, v in names.items() if v is not None}

  def clean(text: str) -> str:
    text = ' '.join(str(text).replace('\t', ' ').splitlines())
    if not text.strip():
      raise ValueError(f'an empty text cannot be written to a {spec.name} TSV file')
    return text

  def label(value) -> str:
    if spec.kind == 'regression':
      return repr(float(value))
    if not 0 <= int(value) < len(spec.tsv_labels or spec.label_names):
      raise ValueError(f'label {value!r} outside the {len(spec.label_names)} classes of '
                       f'{spec.name!r}')
    return spec.tsv_labels[int(value)] if spec.tsv_labels else str(int(value))

  count = 0
  # Plain joins, not csv.writer: the reader uses QUOTE_NONE, so quotes stay verbatim.
  with open(path, 'w', encoding='utf-8', newline='') as f:
    if layout.header:
      header = [f'unused_{i}' for i in range(width)]
      for name, column in names.items():
        header[column] = name
      f.write('\t'.join(header) + '\n')
    for example in examples:
      row = [''] * width
      row[names['text_a']] = clean(example['text_a'])
      if 'text_b' in names:
        row[names['text_b']] = clean(example['text_b'])
      row[names['label']] = label(example['label'])
      f.write('\t'.join(row) + '\n')
      count += 1
  return count
