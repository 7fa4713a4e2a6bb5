"""Student initialisation from a teacher: keep some of its layers, or a narrower slice.

    config, params = select_layers(config, params, [0, 2, 4, 6, 8, 10])  # DistilBERT
    config, params = truncate_width(config, params, num_heads=6, intermediate_size=1536)
    config, params = truncate_width(config, params, hidden_size=384)

`select_layers` keeps whole layers, in the given order (Sanh et al. 2019 start
DistilBERT from every other layer of BERT); the embeddings, pooler and a TaskModel's
head are kept as they are, a scalar mix keeps the weights of the embeddings and of the
kept layers. `truncate_width` keeps *leading* slices: the first `num_heads` heads of
every layer (their query/key/value columns and output rows; the head width stays), the
first `intermediate_size` FFN units, and the first `hidden_size` coordinates of the
residual stream everywhere it appears (embedding tables, LayerNorm scales and biases,
projection rows and columns, pooler, the head's input rows). It is `narrow.narrow`
with leading indices; `narrow.ranked_width` keeps the most important heads, units and
coordinates on a data sample instead. Dropping heads or FFN units is exact up to their
contribution; truncating the hidden size is a heuristic start (LayerNorm statistics
change), to be followed by distillation. Both functions are pure over (config, params)
whose params may be the encoder's or a TaskModel's with an 'encoder' entry.

Example:
  >>> from research.models import init_params
  >>> config = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=4, num_heads=2,
  ...                        intermediate_size=32)
  >>> small, _ = select_layers(config, init_params(config, jax.random.PRNGKey(0)), [1, 3])
  >>> small.num_layers
  2
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from research.models.config import EncoderConfig
from research.transforms import narrow


def _split(params: Mapping[str, Any]) -> tuple[bool, dict]:
  """(is a TaskModel's tree, the encoder's params)."""
  task = 'encoder' in params
  return task, dict(params['encoder'] if task else params)


def _per_layer(value, layers: Sequence[int]):
  return value if isinstance(value, int) else tuple(value[i] for i in layers)


def select_layers(config: EncoderConfig, params: Mapping[str, Any], layers: Sequence[int]
                  ) -> tuple[EncoderConfig, dict]:
  """Keeps the encoder layers `layers` (0-based, in this order); returns (config, params).

  Args:
    config: the encoder's config (no cross-layer sharing).
    params: the encoder's params, or a TaskModel's ({'encoder', 'head', ...}).
    layers: the source layers that become layers 0, 1, ... of the new encoder.

  Returns:
    The new config (num_layers = len(layers), per-layer sizes selected) and params.
  """
  narrow.check_plain(config, 'select_layers')
  layers = [int(i) for i in layers]
  if not layers:
    raise ValueError('select_layers needs at least one layer')
  bad = [i for i in layers if not 0 <= i < config.num_layers]
  if bad:
    raise ValueError(f'select_layers: layer(s) {bad} do not exist; the encoder has layers '
                     f'0..{config.num_layers - 1}')
  task, encoder = _split(params)
  missing = [i for i in layers if f'layer_{i}' not in encoder]
  if missing:
    raise ValueError(f'params lack layer(s) {missing}: give the encoder params or a '
                     "TaskModel's (with an 'encoder' entry)")
  new_config = config.replace(num_layers=len(layers),
                              num_heads=_per_layer(config.num_heads, layers),
                              intermediate_size=_per_layer(config.intermediate_size, layers))
  out = {k: v for k, v in encoder.items() if not k.startswith('layer_')}
  for new, old in enumerate(layers):
    out[f'layer_{new}'] = encoder[f'layer_{old}']
  if not task:
    return new_config, out
  result = {**params, 'encoder': out}
  mix = params.get('layer_mix')
  if mix and 'weights' in mix:  # a scalar mix: one weight per hidden state
    weights = np.asarray(mix['weights'])
    result['layer_mix'] = {**mix, 'weights': weights[[0] + [i + 1 for i in layers]]}
  return new_config, result


def truncate_width(config: EncoderConfig, params: Mapping[str, Any], *,
                   num_heads: int | None = None, intermediate_size: int | None = None,
                   hidden_size: int | None = None) -> tuple[EncoderConfig, dict]:
  """Keeps the leading heads, FFN units and hidden coordinates; returns (config, params).

  `narrow.narrow` with `narrow.leading`'s indices; `narrow.ranked_width` keeps the
  most important ones instead.

  Args:
    config: the encoder's config (dense projections, no cross-layer sharing).
    params: the encoder's params, or a TaskModel's.
    num_heads: heads kept in every layer (<= each layer's count); None keeps them.
    intermediate_size: FFN units kept in every layer; None keeps them.
    hidden_size: residual-stream width kept; None keeps it. With a factorised
      embedding (embedding_size != hidden_size) the tables stay, their projection's
      outputs are truncated.

  Returns:
    The narrower config and params (see the module docstring for what is kept).
  """
  narrow.check_plain(config, 'truncate_width')
  narrow.check_sizes(config, 'truncate_width', num_heads, intermediate_size, hidden_size)
  return narrow.narrow(config, params, **narrow.leading(
      config, num_heads=num_heads, intermediate_size=intermediate_size,
      hidden_size=hidden_size))
