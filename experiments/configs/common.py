"""The `:key=value,flag` argument parser for config files; the library's defaults.

`trainer_defaults` and `default_data_dir` live in the library (research/train/defaults.py,
research/data/sources.py) so notebooks and tests use them without importing experiments/.
"""
from __future__ import annotations

import ml_collections

from research.data.sources import default_data_dir  # pylint: disable=unused-import
from research.train.defaults import trainer_defaults  # pylint: disable=unused-import


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'task=sst2,runlocal' into a ConfigDict over `defaults`.

  A bare word sets a boolean to True. Values are converted to the default's type;
  an unknown key is an error naming the valid keys.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'Unknown config argument {key!r}; valid: {sorted(defaults)}')
    if not sep:
      out[key] = True
    elif isinstance(defaults[key], bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    else:
      out[key] = type(defaults[key])(value)
  return out
