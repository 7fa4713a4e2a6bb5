"""Width reduction keeping chosen heads, FFN units and hidden coordinates, by importance.

    config, params = narrow(config, params, heads={0: [1, 4], 1: [0, 2]}, coordinates=keep)
    config, params = ranked_width(model, params, batches, num_heads=6, intermediate_size=768)
    config, params = narrow(config, params, **leading(config, hidden_size=256))

`narrow` gathers what is kept: heads (their query/key/value columns and output rows;
the head width stays), FFN units, and residual-stream coordinates everywhere the
stream appears (embedding tables, LayerNorm scales and biases, projection rows and
columns, pooler, the head's input rows). Layers may keep different numbers of heads
or units (the config records per-layer sizes, as pruning does). Dropping heads or
units is exact up to their contribution; dropping coordinates is a heuristic start
(LayerNorm statistics change), to be followed by distillation.

Which to keep (`ORDERS`): 'leading' keeps the first ones (`leading`; this is
`student_init.truncate_width`); 'importance' keeps each layer's highest-scored heads
and units and the highest-scored coordinates on a data sample (`ranked_width`).
Heads and units are scored by `prune.importance` (Michel et al. 2019: |dL/dxi| of a
gate on each head's / unit's output). A coordinate c gets the same kind of gate,
shared by every place the residual stream is read: it scales coordinate c of the
embeddings' output and of every LayerNorm's output (final_norm too). Every block,
the pooler and the head read the stream only through those outputs, in post-LN
and pre-LN models alike, so xi_c = 0 is removing c up to the LayerNorm statistics,
the same first-order question Michel et al. ask of a head. It ranks by what the
task loss needs, not by size: narrowing the SST-2 MiniLM-L6 run (runs/sst2_main) from
384 to 192 coordinates without retraining keeps 80.2 dev accuracy by the gate, 77.9
by mean |activation| over the hidden states, 67.6 by the leading order (teacher 89.0;
scored on 512 train examples).

Example:
  >>> from research.models import init_params
  >>> config = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4,
  ...                        intermediate_size=32)
  >>> params = init_params(config, jax.random.PRNGKey(0))
  >>> small, _ = narrow(config, params, heads={0: [1, 3], 1: [0, 2]}, coordinates=range(8))
  >>> small.num_heads, small.hidden_size
  (2, 8)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from research.models.config import EncoderConfig
from research.transforms import prune

ORDERS = ('importance', 'leading')
Keep = Mapping[int, Sequence[int]]  # layer -> indices kept


def check_plain(config: EncoderConfig, what: str) -> None:
  """Raises unless the encoder has dense projections and no cross-layer sharing."""
  if config.attention_map is not None or config.ffn_map is not None:
    raise ValueError(f'{what} needs an encoder without cross-layer sharing '
                     '(attention_map / ffn_map are set)')
  if config.projections:
    raise ValueError(f'{what} needs dense projections; this encoder stores some kernels '
                     f'otherwise ({config.projections}); densify it first '
                     '(projections.densify)')


def check_sizes(config: EncoderConfig, what: str, num_heads: int | None,
                intermediate_size: int | None, hidden_size: int | None) -> None:
  """Raises unless each given width is at least 1 and at most every layer's."""
  layers = range(config.num_layers)
  checks = (('num_heads', num_heads, [config.heads(i) for i in layers]),
            ('intermediate_size', intermediate_size, [config.ffn(i) for i in layers]),
            ('hidden_size', hidden_size, [config.hidden_size]))
  for name, value, current in checks:
    if value is not None and (isinstance(value, bool) or not 1 <= value <= min(current)):
      raise ValueError(f'{what}: {name}={value} must be in 1..{min(current)} '
                       f'(the model has {name} {sorted(set(current))})')


def _coordinates(coordinates: Iterable[int], hidden: int) -> np.ndarray:
  """Checked, sorted coordinate indices."""
  kept = [int(c) for c in coordinates]
  if not kept:
    raise ValueError('narrow: coordinates keeps no hidden coordinate; keep at least one')
  bad = [c for c in kept if not 0 <= c < hidden]
  if bad:
    raise ValueError(f'narrow: coordinate {bad[0]} is out of range; the hidden size is '
                     f'{hidden} (0..{hidden - 1})')
  if len(set(kept)) != len(kept):
    raise ValueError(f'narrow: coordinates repeat an index: {kept}')
  return np.asarray(sorted(kept), np.int64)


def _take(x, *index):
  """x with each axis i gathered at index[i] (None keeps the axis whole)."""
  x = np.asarray(x)
  for axis, idx in enumerate(index):
    if idx is not None:
      x = np.take(x, idx, axis=axis)
  return x


def narrow(config: EncoderConfig, params: Mapping[str, Any], *, heads: Keep | None = None,
           units: Keep | None = None, coordinates: Iterable[int] | None = None
           ) -> tuple[EncoderConfig, dict]:
  """Keeps exactly the given heads, FFN units and hidden coordinates.

  Args:
    config: the encoder's config (dense projections, no cross-layer sharing).
    params: the encoder's params, or a TaskModel's ({'encoder', 'head', ...}).
    heads: layer -> head indices kept; layers not named keep all; None keeps all.
    units: layer -> FFN unit indices kept, likewise.
    coordinates: residual-stream coordinates kept (every layer); None keeps all.

  Returns:
    (config with the new sizes, int where every layer agrees, else per layer; params).
    Indices are kept in increasing order.
  """
  check_plain(config, 'narrow')
  h = None if coordinates is None else _coordinates(coordinates, config.hidden_size)
  new_config = config
  if heads is not None or units is not None:
    # prune.remove checks the indices (layer, range, repeats) and gathers them.
    new_config, params = prune.remove(config, params, heads, units)
    new_config = new_config.replace(
        num_heads=config.num_heads if heads is None else new_config.num_heads,
        intermediate_size=config.intermediate_size if units is None
        else new_config.intermediate_size)
  params = nn.meta.unbox(params)
  task = 'encoder' in params
  encoder = params['encoder'] if task else params
  factorised = config.embed_size != config.hidden_size
  # The embedding LayerNorm runs at the hidden width unless it normalises the tables
  # before their projection.
  norm_at_hidden = not factorised or config.embedding_project_first
  out = {}
  for path, x in traverse_util.flatten_dict(encoder, sep='/').items():
    parts = path.split('/')
    leaf, module = parts[-1], '/'.join(parts[:-1])
    if module.startswith('embeddings/'):
      if module == 'embeddings/projection':
        x = _take(x, None, h) if leaf == 'kernel' else _take(x, h)
      elif module == 'embeddings/layer_norm':
        x = _take(x, h) if norm_at_hidden else _take(x)
      else:  # the tables
        x = _take(x) if factorised else _take(x, None, h)
    elif module.endswith(('attention/query', 'attention/key', 'attention/value')):
      x = _take(x, h) if leaf == 'kernel' else _take(x)
    elif module.endswith('attention/out'):
      x = _take(x, None, None, h) if leaf == 'kernel' else _take(x, h)
    elif module.endswith('mlp/intermediate'):
      x = _take(x, h) if leaf == 'kernel' else _take(x)
    elif module.endswith('mlp/output'):
      x = _take(x, None, h) if leaf == 'kernel' else _take(x, h)
    elif module == 'pooler':
      x = _take(x, h, h) if leaf == 'kernel' else _take(x, h)
    elif module.endswith('norm') or module.endswith('mlp') or module.startswith('final_norm'):
      x = _take(x, h)  # LayerNorms, and a width-0 FFN's output bias
    else:
      raise ValueError(f'narrow does not know the encoder parameter {path!r}')
    out[path] = x
  encoder_out = traverse_util.unflatten_dict(out, sep='/')
  if h is not None:
    new_config = new_config.replace(hidden_size=len(h),
                                    **({} if factorised else {'embedding_size': None}))
  if not task:
    return new_config, encoder_out
  result = {**params, 'encoder': encoder_out}
  if h is not None and 'head' in params:
    head = jax.tree.map(np.asarray, dict(params['head']))
    first = 'dense' if 'dense' in head else 'out'
    head[first] = {**head[first], 'kernel': _take(head[first]['kernel'], h)}
    result['head'] = head
  return new_config, result


# -- which to keep --------------------------------------------------------------------

def leading(config: EncoderConfig, *, num_heads: int | None = None,
            intermediate_size: int | None = None, hidden_size: int | None = None
            ) -> dict[str, Any]:
  """`narrow`'s arguments keeping the first `num_heads` heads, `intermediate_size` units
  of every layer and the first `hidden_size` coordinates (None keeps all)."""
  check_sizes(config, 'leading', num_heads, intermediate_size, hidden_size)
  layers = range(config.num_layers)
  return {'heads': None if num_heads is None else {i: range(num_heads) for i in layers},
          'units': None if intermediate_size is None
          else {i: range(intermediate_size) for i in layers},
          'coordinates': None if hidden_size is None else range(hidden_size)}


@dataclasses.dataclass(frozen=True)
class WidthScores:
  """Importance of each layer's heads and FFN units, and of each hidden coordinate;
  None where not scored."""
  heads: dict[int, np.ndarray] | None
  units: dict[int, np.ndarray] | None
  coordinates: np.ndarray | None


def _gate_sites(config: EncoderConfig) -> tuple[tuple[tuple[str, ...], int], ...]:
  """(encoder param path, its hidden axis) of every parameter that scales coordinate c
  of a stream output: the embeddings' output and every LayerNorm's."""
  factorised = config.embed_size != config.hidden_size
  # The module that writes the embeddings' output: the projection when it comes last
  # (or there is no norm after it), else the LayerNorm, else the tables themselves.
  if factorised and (not config.embedding_project_first or not config.embedding_norm):
    sites = [(('embeddings', 'projection', 'kernel'), 1), (('embeddings', 'projection', 'bias'), 0)]
  elif config.embedding_norm:
    sites = [(('embeddings', 'layer_norm', leaf), 0) for leaf in ('scale', 'bias')]
  else:  # no embedding norm: the output is the tables' sum
    tables = ['word_embeddings', 'position_embeddings'] + (
        ['token_type_embeddings'] if config.type_vocab_size else [])
    sites = [(('embeddings', t, 'embedding'), 1) for t in tables]
  norms = [(f'layer_{i}', n) for i in range(config.num_layers)
           for n in ('attention_norm', 'output_norm')]
  if config.norm_position == 'pre':
    norms.append(('final_norm',))
  sites += [((*n, leaf), 0) for n in norms for leaf in ('scale', 'bias')]
  return tuple(sites)


@functools.lru_cache(maxsize=8)
def _coordinate_fn(model, loss=None):
  """A jitted `(params, batch) -> (|dL/dxi_c| * examples, examples)`, cached per model."""
  sites = _gate_sites(model.encoder)

  def gates(params, batch):
    flat = traverse_util.flatten_dict(params['encoder'])
    chosen = {path: flat[path] for path, _ in sites}

    def loss_fn(chosen):
      encoder = traverse_util.unflatten_dict({**flat, **chosen})
      outputs = model.apply({'params': {**params, 'encoder': encoder}}, batch['input_ids'],
                            batch['attention_mask'], batch.get('token_type_ids'),
                            deterministic=True)[0]
      return (loss or model.objective.loss)(outputs, batch)

    grads, count = jax.grad(loss_fn, has_aux=True)(chosen)
    # One gate per coordinate, shared by every site: dL/dxi_c sums <W, dL/dW> over the
    # slices it scales; |.| per batch, weighted by its examples (as prune.importance).
    total = 0.0
    for path, axis in sites:
      product = chosen[path] * grads[path]
      total = total + jnp.sum(product, axis=tuple(a for a in range(product.ndim) if a != axis))
    return jnp.abs(total) * count, count
  return jax.jit(gates)


def coordinate_importance(model, params: Mapping[str, Any], batches: Iterable[dict], *,
                          loss: Callable | None = None) -> np.ndarray:
  """Mean |dL/dxi_c| of the gate on each hidden coordinate (module docstring) [hidden].

  Args:
    model: a TaskModel; params: its params; batches, loss: as `prune.importance`.
  """
  if 'encoder' not in params:
    raise ValueError("coordinate_importance needs a TaskModel's params (with 'encoder' and "
                     'its head): the scores are gradients of the task loss')
  check_plain(model.encoder, 'coordinate_importance')
  params = nn.meta.unbox(params)
  gates = _coordinate_fn(model, loss)
  scores, total = np.zeros(model.encoder.hidden_size, np.float64), 0.0
  for batch in batches:
    batch = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in 'biuf'}
    values, count = jax.device_get(gates(params, batch))
    scores += values
    total += float(count)
  if total <= 0:
    raise ValueError('coordinate_importance: the batches hold no (weighted) examples')
  return scores / total


def scores(model, params: Mapping[str, Any], batches: Iterable[dict], *, units: bool = True,
           heads: bool = True, coordinates: bool = True, loss: Callable | None = None
           ) -> WidthScores:
  """Importance of heads, FFN units (`prune.importance`) and coordinates, as asked."""
  batches = list(batches)  # read once per kind of score
  per_unit = (prune.importance(model, params, batches, loss=loss) if heads or units
              else None)
  return WidthScores(
      heads=per_unit.heads if heads else None, units=per_unit.neurons if units else None,
      coordinates=coordinate_importance(model, params, batches, loss=loss)
      if coordinates else None)


def top(width_scores: WidthScores, *, num_heads: int | None = None,
        intermediate_size: int | None = None, hidden_size: int | None = None
        ) -> dict[str, Any]:
  """`narrow`'s arguments keeping each layer's `num_heads` / `intermediate_size` highest
  scored heads / units and the `hidden_size` highest-scored coordinates (ties: lower
  index first, so equal scores keep the leading ones)."""
  wanted = (('num_heads', num_heads, width_scores.heads),
            ('intermediate_size', intermediate_size, width_scores.units),
            ('hidden_size', hidden_size, width_scores.coordinates))
  for name, value, scored in wanted:
    if value is not None and scored is None:
      raise ValueError(f'top: {name}={value} needs scores the WidthScores lack')
  keep = lambda values, size: prune.keep_top(values, {j: size for j in values})
  coordinates = None
  if hidden_size is not None:
    values = np.asarray(width_scores.coordinates)
    if not 1 <= hidden_size <= len(values):
      raise ValueError(f'top: hidden_size={hidden_size} must be in 1..{len(values)}')
    coordinates = sorted(int(c) for c in np.argsort(-values, kind='stable')[:hidden_size])
  return {'heads': None if num_heads is None else keep(width_scores.heads, num_heads),
          'units': None if intermediate_size is None
          else keep(width_scores.units, intermediate_size),
          'coordinates': coordinates}


def ranked_width(model, params: Mapping[str, Any], batches: Iterable[dict], *,
                 num_heads: int | None = None, intermediate_size: int | None = None,
                 hidden_size: int | None = None, loss: Callable | None = None
                 ) -> tuple[EncoderConfig, dict]:
  """A narrower model keeping the most important heads, FFN units and coordinates.

  Args:
    model: a TaskModel (dense projections, no cross-layer sharing).
    params: its params ({'encoder', 'head', ...}).
    batches: the scoring sample (see `prune.importance`); read once per kind of score.
    num_heads, intermediate_size: kept in every layer (its best); None keeps all.
    hidden_size: residual-stream coordinates kept (the best); None keeps all.
    loss: `(outputs, batch) -> (mean loss, units)` scored instead of the task loss
      (e.g. distillation against teacher logits placed in the batches).

  Returns:
    The encoder config and params, as `narrow`.
  """
  config = model.encoder
  check_plain(config, 'ranked_width')
  check_sizes(config, 'ranked_width', num_heads, intermediate_size, hidden_size)
  found = scores(model, params, batches, heads=num_heads is not None,
                 units=intermediate_size is not None, coordinates=hidden_size is not None,
                 loss=loss)
  return narrow(config, params, **top(found, num_heads=num_heads,
                                      intermediate_size=intermediate_size,
                                      hidden_size=hidden_size))
