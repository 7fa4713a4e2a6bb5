"""Reads a task split from a local folder in the task's original file format.

`data_dir` may be any of:
  * a folder holding the task folders: `data_dir/SST-2/dev.tsv`,
    `data_dir/conll2003/valid.txt`, `data_dir/squad/dev-v1.1.json`;
  * a folder holding a `glue/` folder of GLUE tasks beside the others (the layout
    of the shared offline data: `data_dir/glue/SST-2/dev.tsv`);
  * the task folder itself (its name must be the task's folder name, e.g. SST-2).

Example:
  >>> spec = tasks.get_task('mrpc')
  >>> examples = read_local(spec, 'validation', '/work/shared/data')
  >>> len(examples)
  408
"""

import os
import pathlib

from research.data import conll, glue_tsv, squad_json, tasks
from research.data.errors import MissingDataError, PathLike


def candidate_dirs(spec: tasks.TaskSpec,
                   data_dir: PathLike) -> list[pathlib.Path]:
  """Returns the folders searched for `spec`'s files, in search order."""
  root = pathlib.Path(data_dir)
  dirs = [root / spec.folder, root / 'glue' / spec.folder]
  if root.name.lower() == spec.folder.lower():
    dirs.insert(0, root)
  return dirs


def find_task_file(spec: tasks.TaskSpec, split: str,
                   data_dir: PathLike) -> pathlib.Path:
  """Locates the file of `split` under `data_dir`.

  Args:
    spec: the task spec.
    split: a split name of the task ('train', 'validation', 'test', ...).
    data_dir: see the module docstring for accepted layouts.

  Returns:
    The path of the existing file.

  Raises:
    ValueError: for an unknown split.
    MissingDataError: if no candidate folder has the file; the message lists
      the paths tried and the files the task expects.
  """
  file_name = spec.file_name(split)
  if not os.path.isdir(data_dir):
    raise MissingDataError(f'data_dir {str(data_dir)!r} is not a directory')
  tried = []
  for folder in candidate_dirs(spec, data_dir):
    path = folder / file_name
    if path.is_file():
      return path
    tried.append(str(path))
  expected = ', '.join(f'{s}: {f}' for s, f in spec.files)
  raise MissingDataError(
      f'no {split!r} file for task {spec.name!r}: tried {tried}. A '
      f'{spec.folder!r} folder is expected with the files ({expected}).')


def read_local(spec: tasks.TaskSpec, split: str, data_dir: PathLike,
               strict: bool = True) -> list[dict]:
  """Reads all examples of a split from local files.

  Args:
    spec: the task spec.
    split: a split name of the task.
    data_dir: see the module docstring.
    strict: passed to the reader (True: malformed rows raise).

  Returns:
    The list of example dicts (schema depends on `spec.kind`, see the readers).

  Raises:
    MissingDataError, ValueError, DataFormatError: see `find_task_file` and the
      readers.
  """
  path = find_task_file(spec, split, data_dir)
  if spec.kind == 'tagging':
    return list(conll.read_conll(path, spec, strict=strict))
  if spec.kind == 'span':
    return list(squad_json.read_squad(path, strict=strict))
  labelled = not split.startswith('test')
  return list(glue_tsv.read_glue_tsv(path, spec, labelled=labelled,
                                     strict=strict))
