"""One entry point for examples: local original-format files or TFDS.

Example:
  >>> train = load_examples('sst2', 'train', data_dir='/work/shared/data/glue')
  >>> dev = load_examples('sst2', 'validation')   # TFDS, if reachable
"""

import os
from pathlib import Path
from typing import Optional, Union

from research.data import local_source, tasks, tfds_source
from research.data.errors import MissingDataError, PathLike

SOURCES = ('auto', 'local', 'tfds')
NO_DATA = ('no data: pass --data_dir pointing to a GLUE folder or make TFDS '
           'reachable')


def load_examples(task: Union[str, tasks.TaskSpec], split: str,
                  data_dir: Optional[PathLike] = None, source: str = 'auto',
                  strict: bool = True) -> list[dict]:
  """Loads all examples of a task split.

  Args:
    task: a task name or a `TaskSpec`.
    split: 'train', 'validation', 'test' (MNLI: also 'validation_matched', ...).
    data_dir: a local data folder (see `local_source`); with source='tfds' it
      is the TFDS data directory instead.
    source: 'local', 'tfds', or 'auto' = 'local' when `data_dir` is given,
      else TFDS.
    strict: local readers only: malformed rows raise (True) or are skipped.

  Returns:
    A list of example dicts in the common schema of the task kind.

  Raises:
    ValueError: for an unknown task, split or source.
    MissingDataError: when the chosen source has no data; for TFDS the message
      says how to fix it and the TFDS error is chained as the cause.
    DataFormatError: for a malformed local file.
  """
  spec = task if isinstance(task, tasks.TaskSpec) else tasks.get_task(task)
  if source not in SOURCES:
    raise ValueError(f'source must be one of {SOURCES}, got {source!r}')
  spec.file_name(split)  # Fails early on an unknown split.
  if source == 'local' or (source == 'auto' and data_dir is not None):
    if data_dir is None:
      raise MissingDataError(f'{NO_DATA} (source="local" needs data_dir)')
    return local_source.read_local(spec, split, data_dir, strict=strict)
  try:
    return tfds_source.read_tfds(
        spec, split, data_dir=None if data_dir is None else str(data_dir))
  except Exception as e:  # TFDS raises many types: import, network, not found.
    raise MissingDataError(
        f'{NO_DATA} (task {spec.name!r}, split {split!r}, TFDS '
        f'{spec.tfds_name!r} failed with {type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}){tfds_hint(spec, e)}') from e


_NETWORK_WORDS = ('resolve', 'max retries', 'network', 'connection', 'timed out',
                  'name or service', 'unreachable', 'download')


def tfds_hint(spec: tasks.TaskSpec, error: BaseException) -> str:
  """The true cause of a TFDS failure and its fix, as a sentence ('' if unknown).

  Without TensorFlow, TFDS cannot register or prepare most builders, so whatever
  import or attribute error surfaced on the way, the fix is the `tfds` extra.
  """
  if not tfds_source.has_tensorflow():
    return ('. TFDS needs TensorFlow to prepare and read this dataset, and it is not '
            "installed: pip install -e '.[tfds]' (TensorFlow CPU), or use the local "
            'files with --config.data_dir=FOLDER')
  if isinstance(error, ImportError):
    return (f'. A module TFDS needs is missing ({error.name or error}): '
            "pip install -e '.[tfds]'")
  text = f'{type(error).__name__} {error}'.lower()
  if isinstance(error, (ConnectionError, TimeoutError)) or any(
      word in text for word in _NETWORK_WORDS):
    return (f'. TFDS could not download {spec.tfds_name!r} (no network?). Prepare it '
            f'where there is network (tfds build {spec.tfds_name} --data_dir=DIR), then '
            'pass --config.data_source=tfds --config.data_dir=DIR; or pass a folder of '
            f'the original files ({spec.folder}/...) with --config.data_dir=FOLDER')
  return 


def default_data_dir(task_folder: str = 'glue') -> str:
  """The data root's `task_folder` ('glue', 'corpus', '' = the root itself), or ''.

  The root is $RESEARCH_DATA_DIR, else ../shared/data beside the repo; it has the layout
  of the shared offline data (glue/SST-2/..., conll2003/..., corpus/gutenberg/...). A
  $RESEARCH_DATA_DIR without a `task_folder` subfolder is returned as it is, so it may
  also name one such folder directly (RESEARCH_DATA_DIR=/data/glue, as older docs said).
  An explicit local folder wins over TFDS, which would try the network first.
  """
  env = os.environ.get('RESEARCH_DATA_DIR')
  root = Path(env) if env else Path(__file__).resolve().parents[3] / 'shared' / 'data'
  folder = root / task_folder if task_folder else root
  if folder.is_dir():
    return str(folder)
  return env or ''
