"""Reader for CoNLL-2003 style column files (NER).

The format is one token per line, space-separated columns with the NER tag last
(CoNLL-2003: `token POS chunk NER`), a blank line between sentences and
`-DOCSTART- -X- -X- O` lines between documents. Each sentence becomes

  {'idx': int, 'tokens': [str, ...], 'tags': [int, ...]}

with tags as indices into `TaskSpec.label_names` (IOB2, same order as TFDS).
'idx' counts sentences from 0 and skips the -DOCSTART- lines, like TFDS.

Example:
  >>> spec = tasks.get_task('conll2003')
  >>> next(read_conll('/data/conll2003/valid.txt', spec))
  {'idx': 0, 'tokens': ['CRICKET', '-', 'LEICESTERSHIRE', ...], 'tags': [0, 0, 3, ...]}
"""

import logging
from typing import Iterator

from research.data import tasks
from research.data.errors import DataFormatError, PathLike

DOCSTART = '-DOCSTART-'


def read_conll(path: PathLike, spec: tasks.TaskSpec,
               strict: bool = True) -> Iterator[dict]:
  """Yields the sentences of a CoNLL column file.

  Args:
    path: the column file (e.g. conll2003/valid.txt).
    spec: a 'tagging' task spec; its `label_names` are the allowed tags.
    strict: if True, the first malformed line raises; if False, sentences with
      a malformed line are skipped and counted in a logged warning.

  Yields:
    Example dicts {'idx', 'tokens', 'tags'}.

  Raises:
    ValueError: if `spec` is not a tagging task.
    FileNotFoundError: if `path` does not exist.
    DataFormatError: for a line with fewer than two columns, a column count
      that differs from the file's first token line, or an unknown tag.
  """
  if spec.kind != 'tagging':
    raise ValueError(f'task {spec.name!r} is a {spec.kind} task, not tagging')
  tag_index = {tag: i for i, tag in enumerate(spec.label_names)}
  num_columns = None
  tokens, tags, bad = [], [], False
  idx = skipped = 0
  with open(path, encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      line = line.rstrip('\r\n')
      if not line.strip() or line.startswith(DOCSTART):
        if tokens and not bad:
          yield {'idx': idx, 'tokens': tokens, 'tags': tags}
          idx += 1
        skipped += bad
        tokens, tags, bad = [], [], False
        continue
      columns = line.split()
      try:
        if len(columns) < 2:
          raise ValueError(f'expected "token ... tag" columns, got {line!r}')
        if num_columns is None:
          num_columns = len(columns)
        if len(columns) != num_columns:
          raise ValueError(f'expected {num_columns} space-separated columns '
                           f'like the first token line, got {len(columns)}')
        if columns[-1] not in tag_index:
          raise ValueError(f'tag {columns[-1]!r} not in the label set '
                           f'{list(spec.label_names)}')
      except ValueError as e:
        if strict:
          raise DataFormatError(path, str(e), line_number) from None
        bad = True
        continue
      tokens.append(columns[0])
      tags.append(tag_index[columns[-1]])
  if tokens and not bad:
    yield {'idx': idx, 'tokens': tokens, 'tags': tags}
  skipped += bad
  if skipped:
    logging.warning('%s: skipped %d sentences with malformed lines', path,
                    skipped)
