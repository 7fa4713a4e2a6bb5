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
