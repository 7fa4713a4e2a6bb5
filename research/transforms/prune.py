"""Structured pruning of attention heads and FFN neurons, by importance, removed for real.

    scores = importance(model, params, batches)            # Michel et al. 2019, per layer
    keep_h = lowest_removed(scores.heads, count=20)        # the 20 least important heads
    keep_n = lowest_removed(scores.neurons, count=300)     # and 300 FFN neurons
    masked = mask_heads(config, params, keep_h)            # ablation: same shapes
    config, params = remove(config, params, keep_h, keep_n)  # smaller, faster model

Importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?"):
a gate xi_h multiplies head h's context; I_h = E_x |dL/dxi_h| at xi = 1. The encoder
needs no gates: scaling head h's context by xi is scaling the rows [h, :, :] of the
attention output kernel, so dL/dxi_h = <W_out[h], dL/dW_out[h]>. An FFN neuron j is
gated the same way through row j of the FFN output kernel. Only those kernels are
differentiated. As in the paper's code, the absolute gate gradient is taken per batch
(of the batch's mean loss, weighted by its examples) and averaged over the sample;
scores are then L2-normalised within each layer so layers can be ranked together.

Layers are parameter sets (`layer_<j>`); with shared layers a set's score sums over
the applications that run it. Masks (`mask_heads`, `mask_neurons`) zero a unit's
weights so the model computes what the pruned one does, for ablation curves; `remove`
slices the kernels and records per-layer sizes in the config (`EncoderConfig.num_heads`
and `intermediate_size` tuples, 0 allowed), so the pruned model really is smaller.
Only dense projections can be sliced: prune before factorizing or quantizing. Rounds of
pruning with a stopping rule are `prune_iterative.iterative_prune`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import projections
from research.models.config import EncoderConfig

Keep = Mapping[int, Sequence[int]]  # parameter set j -> indices of the units kept
_ATTENTION = ('query', 'key', 'value', 'out')
_MLP = ('intermediate', 'output')


@dataclasses.dataclass(frozen=True)
class Importance:
  """Per parameter set j: head scores [heads_j] and FFN neuron scores [width_j].

  `examples` counts the units the loss averaged over: rows (tokens for tagging).
  """
  heads: dict[int, np.ndarray]
  neurons: dict[int, np.ndarray]
  examples: int


def set_heads(config: EncoderConfig) -> dict[int, int]:
  """Heads of each parameter set whose attention some application runs."""
  return {config.attention_set(i): config.heads(i) for i in range(config.num_layers)}


def set_widths(config: EncoderConfig) -> dict[int, int]:
  """FFN width of each parameter set whose FFN some application runs."""
  return {config.ffn_set(i): config.ffn(i) for i in range(config.num_layers)}


def _encoder(params: Mapping[str, Any]) -> tuple[bool, dict, dict]:
  """(whether a TaskModel's, the params unboxed, a copy of the encoder's top level)."""
  params = nn.meta.unbox(params)
  task = 'encoder' in params
  return task, params, dict(params['encoder'] if task else params)


def _check_dense(config: EncoderConfig, encoder: Mapping[str, Any], task: bool,
                 layers: Iterable[int], block: str) -> None:
  """Raises unless the `block` ('attention' or 'mlp') projections of `layers` are dense."""
  prefix = 'encoder/' if task else ''
  for j in layers:
    for name in (_ATTENTION if block == 'attention' else _MLP):
      site = f'layer_{j}/{block}/{name}'
      kind = projections.kind_at(config.projections, prefix + site)
      leaves = encoder.get(f'layer_{j}', {}).get(block, {}).get(name)
      if kind != 'dense' or not isinstance(leaves, Mapping) or 'kernel' not in leaves:
        found = sorted(leaves) if isinstance(leaves, Mapping) else leaves
        raise ValueError(
            f'{site} is stored as {kind!r} (leaves {found}); structured pruning slices '
            'dense kernels only: prune before factorizing or quantizing, or densify '
            'first (projections.densify with the projection rules emptied)')


def _validate(keep: Keep | None, sizes: Mapping[int, int], unit: str) -> dict[int, list[int]]:
  """`keep` checked against the per-set sizes: sorted index lists, every set present."""
  keep = dict(keep or {})
  for j in keep:
    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or j not in sizes:
      raise ValueError(f'{unit}s to keep name layer {j!r}; the model has layers '
                       f'{sorted(sizes)}')
  out = {}
  for j, size in sizes.items():
    indices = [int(i) for i in keep.get(j, range(size))]
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
      raise ValueError(f'{unit} index {bad[0]} is out of range for layer {j}, which has '
                       f'{size} {unit}s (0..{size - 1})')
    if len(set(indices)) != len(indices):
      raise ValueError(f'{unit}s to keep in layer {j} repeat an index: {indices}')
    out[j] = sorted(indices)
  return out


# -- importance ------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _gate_fn(model, loss=None):
  """A jitted `(params, batch) -> (|dL/dxi| per head, per neuron), examples`, cached per
  (hashable) model and loss so repeated scoring of one architecture compiles once."""
  config = model.encoder
  heads = [j for j, n in set_heads(config).items() if n]
  widths = [j for j, w in set_widths(config).items() if w]

  def gates(params, batch):
    encoder = params['encoder']
    kernels = {'heads': {j: encoder[f'layer_{j}']['attention']['out']['kernel'] for j in heads},
               'neurons': {j: encoder[f'layer_{j}']['mlp']['output']['kernel'] for j in widths}}

    def loss_fn(chosen):
      layers = {f'layer_{j}': dict(encoder[f'layer_{j}']) for j in set(heads) | set(widths)}
      for j, kernel in chosen['heads'].items():
        attention = dict(layers[f'layer_{j}']['attention'])
        attention['out'] = {**attention['out'], 'kernel': kernel}
        layers[f'layer_{j}']['attention'] = attention
      for j, kernel in chosen['neurons'].items():
        mlp = dict(layers[f'layer_{j}']['mlp'])
        mlp['output'] = {**mlp['output'], 'kernel': kernel}
        layers[f'layer_{j}']['mlp'] = mlp
      full = {**params, 'encoder': {**encoder, **layers}}
      outputs = model.apply({'params': full}, batch['input_ids'], batch['attention_mask'],
                            batch.get('token_type_ids'), deterministic=True)[0]
      return (loss or model.objective.loss)(outputs, batch)

    grads, count = jax.grad(loss_fn, has_aux=True)(kernels)
    # dL/dxi = <W, dL/dW> over the rows a gate scales; |.| per batch, weighted by rows.
    head = {j: jnp.abs(jnp.einsum('hde,hde->h', kernels['heads'][j], g)) * count
            for j, g in grads['heads'].items()}
    neuron = {j: jnp.abs(jnp.einsum('fe,fe->f', kernels['neurons'][j], g)) * count
              for j, g in grads['neurons'].items()}
    return head, neuron, count
  return jax.jit(gates)


def importance(model, params: Mapping[str, Any], batches: Iterable[dict], *,
               normalize: bool = True, loss: Callable | None = None) -> Importance:
  """Head and FFN-neuron importance of a TaskModel over `batches` (see module docstring).

  Args:
    model: a TaskModel (its objective's loss is differentiated).
    params: its params ({'encoder', 'head', ...}).
    batches: dicts with 'input_ids', 'attention_mask', the objective's labels and
      optional 'token_type_ids' / 'weights' (a `BatchIterator`'s batches).
    normalize: divide each layer's scores by their L2 norm (the paper's ranking).
    loss: `(outputs, batch) -> (mean loss, units)` differentiated instead of the
      objective's loss, e.g. a distillation loss reading teacher logits the caller put
      in each batch (numeric entries reach it); a module-level function, so the
      compiled scorer is reused.

  Returns:
    An `Importance`; a layer with no heads (or no FFN) has an empty array.
  """
  if 'encoder' not in params:
    raise ValueError("importance needs a TaskModel's params (with 'encoder' and its head): "
                     'the scores are gradients of the task loss')
  config = model.encoder
  task, params, encoder = _encoder(params)
  _check_dense(config, encoder, task, [j for j, n in set_heads(config).items() if n],
               'attention')
  _check_dense(config, encoder, task, [j for j, w in set_widths(config).items() if w], 'mlp')
  heads = {j: np.zeros(n, np.float64) for j, n in set_heads(config).items()}
  neurons = {j: np.zeros(w, np.float64) for j, w in set_widths(config).items()}
  gates, total = _gate_fn(model, loss), 0.0
  for batch in batches:
    batch = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in 'biuf'}
    head, neuron, count = jax.device_get(gates(params, batch))
    total += float(count)
    for j, values in head.items():
      heads[j] += values
    for j, values in neuron.items():
      neurons[j] += values
  if total <= 0:
    raise ValueError('importance: the batches hold no (weighted) examples')
  result = []
  for scores in (heads, neurons):
    scores = {j: s / total for j, s in scores.items()}
    if normalize:
      scores = {j: s / (np.linalg.norm(s) + 1e-20) for j, s in scores.items()}
    result.append(scores)
  return Importance(result[0], result[1], int(round(total)))


# -- choosing what to keep -------------------------------------------------------------

def removable(scores: Mapping[int, np.ndarray], min_per_layer: int = 0) -> int:
  """How many units `lowest_removed` may take while each layer keeps `min_per_layer`."""
  return sum(max(0, len(values) - min_per_layer) for values in scores.values())


def lowest_removed(scores: Mapping[int, np.ndarray], count: int, min_per_layer: int = 0
                   ) -> dict[int, list[int]]:
  """What to keep when the `count` least important units over all layers go.

  Args:
    scores: layer -> unit scores (an `Importance`'s heads or neurons).
    count: units to remove, ranked over all layers together.
    min_per_layer: each layer keeps at least this many (its best ones); the next
      least important unit of another layer goes instead.

  Ties break by layer, then index, so the choice is deterministic.
  """
  ranked = sorted((float(s), j, i) for j, values in scores.items()
                  for i, s in enumerate(np.asarray(values)))
  most = removable(scores, min_per_layer)
  if isinstance(count, bool) or not 0 <= count <= most:
    kept = f', {min_per_layer} kept per layer' if min_per_layer else ''
    raise ValueError(f'count must be in 0..{most} (the units scored{kept}), got {count!r}')
  left = {j: len(values) for j, values in scores.items()}
  gone = set()
  for _, j, i in ranked:
    if len(gone) == count:
      break
    if left[j] > min_per_layer:
      gone.add((j, i))
      left[j] -= 1
  return {j: [i for i in range(len(values)) if (j, i) not in gone]
          for j, values in scores.items()}


def keep_top(scores: Mapping[int, np.ndarray], sizes: Mapping[int, int]) -> dict[int, list[int]]:
  """What to keep for per-layer sizes: each layer's `sizes[j]` most important units."""
  unknown = sorted(set(sizes) - set(scores))
  if unknown:
    raise ValueError(f'sizes name layers {unknown}; the scores have layers {sorted(scores)}')
  keep = {}
  for j, values in scores.items():
    size = sizes.get(j, len(values))
    if size < 0:
      raise ValueError(f'layer {j}: a width below 0 ({size}) is not a size; use 0 to '
                       'remove the block')
    if size > len(values):
      raise ValueError(f'layer {j}: cannot keep {size} of its {len(values)} units')
    keep[j] = sorted(int(i) for i in np.argsort(-np.asarray(values), kind='stable')[:size])
  return keep


# -- masks (ablations) and removal -----------------------------------------------

def _zeroed(array, indices: Sequence[int], axis: int) -> np.ndarray:
  out = np.array(array, copy=True)
  index = [slice(None)] * out.ndim
  index[axis] = list(indices)
  out[tuple(index)] = 0
  return out


def mask_heads(config: EncoderConfig, params: Mapping[str, Any], heads_to_keep: Keep) -> dict:
  """Params whose heads outside `heads_to_keep` contribute nothing (same shapes).

  Zeroes the value kernel and bias and the output rows of each removed head, so the
  outputs equal those of `remove(config, params, heads_to_keep)`. Layers not named
  keep all their heads.
  """
  # The value projection's heads and the output projection's input rows of a head.
  return _masked(config, params, heads_to_keep, set_heads(config), 'head', 'attention',
                 {'value': (1, True), 'out': (0, False)})


def mask_neurons(config: EncoderConfig, params: Mapping[str, Any], neurons_to_keep: Keep
                 ) -> dict:
  """Params whose FFN neurons outside `neurons_to_keep` contribute nothing (same shapes).

  Zeroes each removed neuron's input column and bias (its activation is 0 for GELU and
  ReLU) and its output row.
  """
  # The intermediate projection's output columns and the output projection's rows.
  return _masked(config, params, neurons_to_keep, set_widths(config), 'neuron', 'mlp',
                 {'intermediate': (1, True), 'output': (0, False)})


def _masked(config, params, keep: Keep, sizes: Mapping[int, int], unit: str, block: str,
            zero: Mapping[str, tuple[int, bool]]) -> dict:
  """Params with the units outside `keep` zeroed in `block`'s projections: for each
  projection name, (kernel axis of the units, whether its bias is zeroed too)."""
  task, params, encoder = _encoder(params)
  keep = _validate(keep, sizes, unit)
  changed = [j for j in keep if len(keep[j]) < sizes[j]]
  _check_dense(config, encoder, task, changed, block)
  for j in changed:
    gone = sorted(set(range(sizes[j])) - set(keep[j]))
    parts = dict(encoder[f'layer_{j}'][block])
    for name, (axis, bias) in zero.items():
      parts[name] = {**parts[name], 'kernel': _zeroed(parts[name]['kernel'], gone, axis),
                     **({'bias': _zeroed(parts[name]['bias'], gone, 0)} if bias else {})}
    encoder[f'layer_{j}'] = {**encoder[f'layer_{j}'], block: parts}
  return {**params, 'encoder': encoder} if task else encoder


def _per_application(config: EncoderConfig, sizes: Mapping[int, int], which) -> int | tuple:
  values = tuple(sizes[which(i)] for i in range(config.num_layers))
  return values[0] if len(set(values)) == 1 else values


def remove(config: EncoderConfig, params: Mapping[str, Any], heads_to_keep: Keep | None = None,
           neurons_to_keep: Keep | None = None) -> tuple[EncoderConfig, dict]:
  """Slices away the heads and FFN neurons not kept: a smaller config and params.

  Args:
    config: the encoder's config.
    params: the encoder's params, or a TaskModel's (with an 'encoder' entry).
    heads_to_keep: layer -> head indices kept; layers not named keep all. A layer may
      keep none (its attention block reduces to the output bias), not every layer.
    neurons_to_keep: layer -> FFN neuron indices kept; an empty list removes the FFN.

  Returns:
    (config with per-layer `num_heads` / `intermediate_size`, sliced params).
  """
  task, params, encoder = _encoder(params)
  heads, widths = set_heads(config), set_widths(config)
  keep_h = _validate(heads_to_keep, heads, 'head')
  keep_n = _validate(neurons_to_keep, widths, 'neuron')
  new_heads = {j: len(k) for j, k in keep_h.items()}
  new_widths = {j: len(k) for j, k in keep_n.items()}
  if not any(new_heads.values()):
    raise ValueError('this would remove every attention head of every layer; keep at '
                     'least one head (one layer may lose all of its heads)')
  changed_h = [j for j in keep_h if new_heads[j] < heads[j]]
  changed_n = [j for j in keep_n if new_widths[j] < widths[j]]
  _check_dense(config, encoder, task, changed_h, 'attention')
  _check_dense(config, encoder, task, changed_n, 'mlp')
  take = lambda x, idx, axis: np.take(np.asarray(x), np.asarray(idx, np.int64), axis=axis)
  for j in changed_h:
    idx = keep_h[j]
    attention = dict(encoder[f'layer_{j}']['attention'])
    for name in ('query', 'key', 'value'):
      attention[name] = {**attention[name], 'kernel': take(attention[name]['kernel'], idx, 1),
                         'bias': take(attention[name]['bias'], idx, 0)}
    attention['out'] = {**attention['out'], 'kernel': take(attention['out']['kernel'], idx, 0)}
    encoder[f'layer_{j}'] = {**encoder[f'layer_{j}'], 'attention': attention}
  for j in changed_n:
    idx = keep_n[j]
    mlp = encoder[f'layer_{j}']['mlp']
    if not idx:  # the encoder's FFN of width 0 holds only its output bias
      new_mlp = {'output_bias': np.asarray(mlp['output']['bias'])}
    else:
      new_mlp = {'intermediate': {**mlp['intermediate'],
                                  'kernel': take(mlp['intermediate']['kernel'], idx, 1),
                                  'bias': take(mlp['intermediate']['bias'], idx, 0)},
                 'output': {**mlp['output'], 'kernel': take(mlp['output']['kernel'], idx, 0)}}
    encoder[f'layer_{j}'] = {**encoder[f'layer_{j}'], 'mlp': new_mlp}
  new_config = config.replace(
      num_heads=_per_application(config, new_heads, config.attention_set),
      intermediate_size=_per_application(config, new_widths, config.ffn_set))
  return new_config, ({**params, 'encoder': encoder} if task else encoder)
