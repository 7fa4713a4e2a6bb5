"""The `:key=value,flag` argument parser for config files; the library's defaults.

The defaults live in the library (`research/train/defaults.py`, `research/data/sources.py`,
each study's `defaults()` in `research/runs/`), so notebooks and tests use them without
importing experiments/; a config file starts from them and adds its variants.
"""
from __future__ import annotations

import ml_collections

from research import specs
from research.data.sources import default_data_dir  # pylint: disable=unused-import
from research.train.defaults import pretraining_defaults, trainer_defaults  # pylint: disable=unused-import


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'task=sst2,runlocal' into a ConfigDict over `defaults`.

  A bare word sets a boolean to True. Values are converted to the default's type;
  an unknown key is an error naming the valid keys.
  """
  out = ml_collections.ConfigDict(defaults)
  for key, value in specs.fields(arg or '', known=defaults, convert=str, flags=True,
                                 what='config argument').items():
    if value is True:
      out[key] = True
    elif isinstance(defaults[key], bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    else:
      out[key] = type(defaults[key])(value)
  return out


def corpus_smoke_run(config: ml_collections.ConfigDict, max_documents: int = 1
                     ) -> ml_collections.ConfigDict:
  """A corpus run shrunk to a smoke run (tests, notebooks): `max_documents` documents,
  8 dev sequences, 64-token batches of 8, 6 steps."""
  config.corpus.max_documents = max_documents
  config.corpus.dev_sequences = 8
  config.max_length = 64
  config.pad_multiple = 64
  config.batch_size = 8
  config.eval_batch_size = 8
  config.total_steps = 6
  config.log_every = 1
  return config
