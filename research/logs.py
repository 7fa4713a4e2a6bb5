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
