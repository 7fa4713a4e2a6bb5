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
projection rows and columns, pooler, the head's input rows). Dropping heads or FFN
units is exact up to their contribution; truncating the hidden size is a heuristic
start (LayerNorm statistics change), to be followed by distillation. Neither picks
by importance (`prune.py` does that); both are pure functions over (config, params)
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

import jax
import numpy as np
from flax import traverse_util

from research.models.config import EncoderConfig


def _split(params: Mapping[str, Any]) -> tuple[bool, dict]:
  """(is a TaskModel's tree, the encoder's params)."""
  task = 'encoder' in params
  return task, dict(params['encoder'] if task else params)


def _check_plain(config: EncoderConfig, what: str) -> None:
  if config.attention_map is not None or config.ffn_map is not None:
    raise ValueError(f'{what} needs an encoder without cross-layer sharing '
                     '(attention_map / ffn_map are set)')
  if config.projections:
    raise ValueError(f'{what} needs dense projections; this encoder stores some kernels '
                     f'otherwise ({config.projections}); densify it first '
                     '(projections.densify)')


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
  _check_plain(config, 'select_layers')
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


def _slice(x, *sizes):
  """x[:sizes[0], :sizes[1], ...] (None keeps an axis whole)."""
  return np.asarray(x)[tuple(slice(None) if s is None else slice(0, s) for s in sizes)]


def truncate_width(config: EncoderConfig, params: Mapping[str, Any], *,
                   num_heads: int | None = None, intermediate_size: int | None = None,
                   hidden_size: int | None = None) -> tuple[EncoderConfig, dict]:
  """Keeps the leading heads, FFN units and hidden coordinates; returns (config, params).

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
  _check_plain(config, 'truncate_width')
  layers = range(config.num_layers)
  checks = (('num_heads', num_heads, [config.heads(i) for i in layers]),
            ('intermediate_size', intermediate_size, [config.ffn(i) for i in layers]),
            ('hidden_size', hidden_size, [config.hidden_size]))
  for name, value, current in checks:
    if value is not None and not 1 <= value <= min(current):
      raise ValueError(f'truncate_width: {name}={value} must be in 1..{min(current)} '
                       f'(the model has {name} {sorted(set(current))})')
  n, w, h = num_heads, intermediate_size, hidden_size
  factorised = config.embed_size != config.hidden_size
  task, encoder = _split(params)
  flat = traverse_util.flatten_dict(encoder, sep='/')
  out = {}
  for path, x in flat.items():
    parts = path.split('/')
    leaf, module = parts[-1], '/'.join(parts[:-1])
    if module.startswith('embeddings/'):
      if module == 'embeddings/projection':
        x = _slice(x, None, h) if leaf == 'kernel' else _slice(x, h)
      elif not factorised:  # tables and LayerNorm at the hidden width
        x = _slice(x, None, h) if leaf == 'embedding' else _slice(x, h)
    elif module.endswith(('attention/query', 'attention/key', 'attention/value')):
      x = _slice(x, h, n) if leaf == 'kernel' else _slice(x, n)
    elif module.endswith('attention/out'):
      x = _slice(x, n, None, h) if leaf == 'kernel' else _slice(x, h)
    elif module.endswith('mlp/intermediate'):
      x = _slice(x, h, w) if leaf == 'kernel' else _slice(x, w)
    elif module.endswith('mlp/output'):
      x = _slice(x, w, h) if leaf == 'kernel' else _slice(x, h)
    elif module == 'pooler':
      x = _slice(x, h, h) if leaf == 'kernel' else _slice(x, h)
    elif module.endswith('norm') or module.endswith('mlp') or module.startswith('final_norm'):
      x = _slice(x, h)  # LayerNorms, and a pruned FFN's output bias
    else:
      raise ValueError(f'truncate_width does not know the encoder parameter {path!r}')
    out[path] = x
  encoder_out = traverse_util.unflatten_dict(out, sep='/')
  changes = {}
  if n is not None:
    changes['num_heads'] = n
  if w is not None:
    changes['intermediate_size'] = w
  if h is not None:
    changes['hidden_size'] = h
    if not factorised:
      changes['embedding_size'] = None
  new_config = config.replace(**changes)
  if not task:
    return new_config, encoder_out
  result = {**params, 'encoder': encoder_out}
  if h is not None and 'head' in params:
    head = jax.tree.map(np.asarray, dict(params['head']))
    first = 'dense' if 'dense' in head else 'out'
    head[first] = {**head[first], 'kernel': _slice(head[first]['kernel'], h)}
    result['head'] = head
  return new_config, result
