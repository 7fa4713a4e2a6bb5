"""What a command line prints: progress, results and real warnings, not library chatter.

    logs.setup()    # the first line of every script's main

INFO from the library (what a run reads, how far it got); WARNING and above from the
libraries under it, which log routine events at INFO: orbax (every file it reads or
writes), JAX's backend search ("Unable to initialize backend 'tpu'" on every machine
without one), TensorFlow / TFDS.
"""
from __future__ import annotations

import logging

CHATTY = ('absl', 'jax._src.xla_bridge', 'jax._src.compiler', 'tensorflow',
          'tensorflow_datasets', 'h5py', 'matplotlib')


def setup(level: int = logging.INFO) -> None:
  """The root logger at `level`; the chatty third-party loggers at WARNING."""
  logging.getLogger().setLevel(level)
  for name in CHATTY:
    logging.getLogger(name).setLevel(max(level, logging.WARNING))


class _NoReadOnlyNotice(logging.Filter):
  """Orbax warns twice for every read-only checkpoint manager ('Given directory is read
  only', 'read_only=True, setting save_interval_steps=0'); run folders are opened
  read-only on purpose (to read them), so that is not news."""
  NOTICES = ('Given directory is read only', 'CheckpointManagerOptions.read_only=True',
             'Metadata file does not exist')

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.NOTICES)


def drop_read_only_notices() -> None:
  """Drops orbax's read-only notices (installed once, by whoever reads run folders)."""
  absl = logging.getLogger('absl')
  if not any(isinstance(f, _NoReadOnlyNotice) for f in absl.filters):
    absl.addFilter(_NoReadOnlyNotice())
