"""A student cut from the model a run starts from: some of its layers, a narrower width.

    --config.model=minilm-l6 --config.student='layers=1,3,5 hidden=256 order=leading'

The spec is FastFormers' student spec (`research/runs/fastformers.py` reads it too):
space-separated `layers=<source layers>` (0-based, in order), `heads=` (heads kept per
layer), `ffn=` (FFN units per layer), `hidden=` (residual-stream width) and `order=`
(which heads / units / coordinates are kept: 'leading', or 'importance', ranked on
data; see `research/transforms/narrow.py`). The trainer cuts the student from
`config.model` (or `config.init_from`) before training (`source.load_source`), so
general distillation from a teacher and task distillation of the same student without
it start from the same weights. A random student of a given architecture is
`config.scratch` instead.

Example:
  >>> parse('layers=1,3,5 hidden=256')
  {'layers': '1,3,5', 'hidden': '256'}
"""
from __future__ import annotations

from typing import Any

from research import specs
from research.transforms import narrow, student_init

KEYS = ('layers', 'heads', 'ffn', 'hidden', 'order')
WIDTHS = {'heads': 'num_heads', 'ffn': 'intermediate_size', 'hidden': 'hidden_size'}


def parse(spec: str) -> dict[str, str]:
  """'layers=1,3,5 hidden=256 order=leading' -> {'layers': '1,3,5', ...}.

  Raises ValueError naming the spec for an unknown key, an unknown order, or an order
  without a width to choose.
  """
  fields = specs.fields(spec, known=KEYS, sep=' ', convert=str, what='student')
  if not fields:
    raise ValueError(f'student {spec!r} names no layers= or width (heads=, ffn=, hidden=)')
  if fields.get('order', 'importance') not in narrow.ORDERS:
    raise ValueError(f'student {spec!r}: order must be one of {list(narrow.ORDERS)}, '
                     f'got {fields["order"]!r}')
  if 'order' in fields and not any(k in fields for k in WIDTHS):
    raise ValueError(f'student {spec!r}: order= chooses which heads / units / coordinates '
                     'a narrowed student keeps; it needs heads=, ffn= or hidden=')
  for key in WIDTHS:
    if key in fields:
      try:
        int(fields[key])
      except ValueError:
        raise ValueError(f'student {spec!r}: {key}= needs an integer, got '
                         f'{fields[key]!r}') from None
  return fields


def sizes(fields: dict[str, str]) -> dict[str, int | None]:
  """The `narrow` width arguments of a parsed spec (None where not narrowed)."""
  return {name: int(fields[key]) if key in fields else None for key, name in WIDTHS.items()}


def cut(spec: str, config, params: Any, source: str = 'the source model'):
  """(encoder config, params) of the student `spec` cut from `config` / `params`.

  Layers are selected first, then the width narrowed by keeping the leading heads,
  units and coordinates (`order=importance` needs data and a loss: the trainer does
  not rank, see the module docstring). A width above the source's is a ValueError
  naming it and `source`.
  """
  fields = parse(spec)
  if fields.get('order', 'importance') == 'importance' and any(k in fields for k in WIDTHS):
    raise ValueError(f'config.student={spec!r}: the trainer narrows a student by keeping '
                     "the leading heads / units / coordinates; add order=leading (ranking by "
                     'importance needs a scored sample: research/runs/transform.py '
                     'truncate_width, then --config.init_from)')
  try:
    if 'layers' in fields:
      config, params = student_init.select_layers(
          config, params, specs.items(fields['layers'], int, what='student layers'))
    if any(k in fields for k in WIDTHS):
      config, params = student_init.truncate_width(config, params, **sizes(fields))
  except ValueError as e:
    raise ValueError(f'config.student={spec!r} does not fit {source}: {e}') from e
  return config, params
