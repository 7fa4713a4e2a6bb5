"""Post-training quantization: calibration, int8 / int4 kernels and the integer path.

    stats = calibrate(model, params, batches)               # each projection's input range
    config, params = ptq(encoder_config, params, stats, 'mse')   # int8 storage, int8 products

`calibrate` observes every projection's input through the product seam; `ptq` stores
each calibrated projection as an `int8` (or packed `int4`) projection kind
(`research/models/projections.py`) with per-output-channel kernel scales and a static
input scale, so the encoder multiplies int8 x int8 -> int32 without being edited.
Quantization-aware training (fake quantization in training) is `qat.py`.
"""
from __future__ import annotations

import itertools
import logging
import re
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import products, projections

Array = jax.Array

# -- Post-training quantization: calibration, int8 storage and the integer path ---------

# The encoder projections PTQ converts (paths inside the encoder).
PTQ_SITES = r'layer_\d+/(attention/(query|key|value|out)|mlp/(intermediate|output))'
CALIBRATIONS = ('max', 'percentile', 'mse')
_OBSERVED: dict[str, list[dict]] = {}
_MSE_GRID = np.linspace(0.2, 1.0, 81)
_SAMPLE = 1 << 18


def _observe_product(site: str) -> products.Product:
  """The default product, which also reports statistics of its input (`calibrate`)."""
  def product(einsum, lhs, rhs, *, bias=None, out_dtype=None):
    x = jnp.abs(lhs.astype(jnp.float32)).reshape(-1)
    top = jnp.max(x)
    # Percentile and clip search on an even subsample: a full sort and an 81-way error
    # sweep over every element of every batch would dominate calibration time.
    x = x[::max(1, x.size // _SAMPLE)]
    # MSE-optimal clipping: the 8-bit symmetric grid's squared error at candidate clips.
    clips = top * _MSE_GRID
    scales = jnp.where(clips > 0, clips / 127.0, 1.0)
    errors = jax.vmap(lambda s: jnp.mean(jnp.square(
        jnp.clip(jnp.round(x / s), -127, 127) * s - x)))(scales)
    stats = {'max': top, 'percentile': jnp.quantile(x, 0.9999),
             'mse': clips[jnp.argmin(errors)]}
    jax.debug.callback(lambda s: _OBSERVED.setdefault(site, []).append(
        {k: float(v) for k, v in s.items()}), stats)
    return products.default(einsum, lhs, rhs, bias=bias, out_dtype=out_dtype)
  return product


products.register('observe', _observe_product)


def calibrate(model, params, batches, sites: str = PTQ_SITES) -> dict[str, dict[str, float]]:
  """Statistics of each projection's input over `batches` (a TaskModel or an Encoder).

  Per site: 'max' (largest |x|), 'percentile' (the 99.99th percentile of |x|) and
  'mse' (the clip whose 8-bit grid has the least squared error), each averaged over
  batches except 'max' (the maximum). Batches are dicts with 'input_ids',
  'attention_mask' and optional 'token_type_ids'.
  """
  # Batches without rows have nothing to observe (and a max over no values has no
  # identity): drop them, and fail before any tracing when none is left.
  batches = (b for b in batches if np.shape(b['input_ids'])[0])
  first = next(batches, None)
  if first is None:
    raise ValueError('calibrate: the batches hold no examples; calibration needs at least '
                     'one (e.g. a few hundred training examples)')
  params = nn.meta.unbox(params)
  task = hasattr(model, 'objective')
  config = model.encoder if task else model.config
  ids = jnp.zeros((1, 4), jnp.int32)
  with products.recording() as found:
    jax.eval_shape(lambda: model.apply({'params': params}, ids, jnp.ones_like(ids)))
  prefix = 'encoder/' if task else ''
  chosen = sorted({s for s, _ in found if re.fullmatch(prefix + sites, s)})
  if not chosen:
    raise ValueError(f'calibrate: sites {sites!r} match no product of the model (its sites '
                     f'are e.g. {sorted(s[len(prefix):] for s, _ in found)[:3]})')
  rules = tuple((re.escape(s), f'observe:{s}') for s in chosen) + config.products
  observed = config.replace(products=rules)
  observing = model.clone(**({'encoder': observed} if task else {'config': observed}))
  forward = jax.jit(lambda p, b: observing.apply(
      {'params': p}, b['input_ids'], b['attention_mask'], b.get('token_type_ids'))[0])
  _OBSERVED.clear()
  for batch in itertools.chain([first], batches):
    jax.block_until_ready(forward(params, batch))
  jax.effects_barrier()
  stats = {}
  for site in chosen:
    rows = _OBSERVED.get(site, [])
    if not rows:
      raise ValueError(f'calibration saw no input at {site}')
    stats[site[len(prefix):]] = {'max': max(r['max'] for r in rows),
                                 'percentile': float(np.mean([r['percentile'] for r in rows])),
                                 'mse': float(np.mean([r['mse'] for r in rows]))}
  _OBSERVED.clear()
  return stats


class Int8(projections.Projection):
  """An int8 kernel with per-output-channel scales and a static input scale.

  Params: 'qkernel' int8 [in axes..., out axes...], 'kernel_scale' float32 [out axes...],
  'input_scale' float32 [], 'bias'. The input is quantized once (round(x / s), clipped
  to +-127; XLA fuses that into the op producing x), multiplied int8 x int8 -> int32 by
  the site's product, and rescaled by input_scale * kernel_scale. With `integer=False`
  the same quantized values are multiplied in float32 (the fake-quantized reference).
  """
  integer: bool = True
  STORED = ('qkernel',)

  @nn.compact
  def weights(self) -> tuple[Array, Array, Array, Array | None]:
    """(qkernel, kernel_scale, input_scale, bias) as stored."""
    n_in, _ = self._split()
    qkernel = self.param('qkernel', nn.with_logical_partitioning(
        nn.initializers.zeros_init(), self.kernel_axes), self.kernel_shape, jnp.int8)
    kernel_scale = self.param('kernel_scale', nn.with_logical_partitioning(
        nn.initializers.ones_init(), self.kernel_axes[n_in:]), self.kernel_shape[n_in:],
                              jnp.float32)
    input_scale = self.param('input_scale', nn.initializers.ones_init(), (), jnp.float32)
    return qkernel, kernel_scale, input_scale, self.bias_param()

  def _multiply(self, spec, x, qkernel, input_scale, kernel_scale, bias):
    xq = jnp.clip(jnp.round(x.astype(jnp.float32) / input_scale), -127, 127)
    if self.integer:
      y = self.product()(spec, xq.astype(jnp.int8), qkernel, out_dtype=jnp.int32)
    else:
      y = self.product()(spec, xq, qkernel.astype(jnp.float32), out_dtype=jnp.float32)
    y = y.astype(jnp.float32) * (input_scale * kernel_scale)
    if bias is not None:
      y = y + bias.astype(jnp.float32)
    return y

  def __call__(self, x):
    qkernel, kernel_scale, input_scale, bias = self.weights()
    y = self._multiply(self.spec, x, qkernel, input_scale, kernel_scale, bias)
    return y.astype(self.out_dtype or self.dtype)

  @staticmethod
  def fused(modules: Sequence['Int8'], x: Array, out_dtype) -> Array:
    """Several int8 projections of one input as one product, the input quantized once.

    They must share the input scale (`ptq` gives Q, K and V one: they read one tensor);
    the first module's is used.
    """
    weights = [m.weights() for m in modules]
    for m in modules[1:]:
      m.product()  # each site is looked up (and recorded); they share one product
    flat = lambda t: t.reshape(t.shape[0], -1)
    qkernel = jnp.concatenate([flat(w[0]) for w in weights], axis=1)
    kernel_scale = jnp.concatenate([w[1].reshape(-1) for w in weights])
    bias = None
    if all(w[3] is not None for w in weights):
      bias = jnp.concatenate([w[3].reshape(-1) for w in weights])
    y = modules[0]._multiply('bsi,io->bso', x, qkernel, weights[0][2], kernel_scale, bias)  # pylint: disable=protected-access
    return y.astype(out_dtype)

  @staticmethod
  def dense_params(params: dict, **kind_fields) -> dict:
    """The dequantized kernel (the input's static grid has no dense equivalent)."""
    kernel = np.asarray(params['qkernel'], np.float32) * np.asarray(params['kernel_scale'])
    return {'kernel': kernel, **({'bias': params['bias']} if 'bias' in params else {})}


def pack_int4(q: np.ndarray, axis: int = 0) -> np.ndarray:
  """int8 values in [-8, 7] -> two per byte along `axis` (its length halves), int8.

  Along `axis`, entry 2i goes to the low nibble and 2i + 1 to the high one.
  """
  if q.shape[axis] % 2:
    raise ValueError(f'int4 packing needs an even length on axis {axis}, got {q.shape}')
  if q.min() < -8 or q.max() > 7:
    raise ValueError('int4 values must lie in [-8, 7]')
  u = np.moveaxis(q.astype(np.uint8), axis, 0)
  return np.moveaxis(((u[0::2] & 0x0F) | (u[1::2] << 4)).view(np.int8), 0, axis)


def unpack_int4(packed: Array, axis: int = 0) -> Array:
  """`pack_int4`'s inverse (jax): the axis doubles again, int8."""
  p = jnp.moveaxis(packed, axis, 0)
  low = jnp.right_shift(jnp.left_shift(p, 4), 4)  # int8 shifts sign-extend
  high = jnp.right_shift(p, 4)
  q = jnp.stack([low, high], axis=1).reshape((-1,) + p.shape[1:])
  return jnp.moveaxis(q, 0, axis)


class Int4(Int8):
  """`Int8` with the kernel stored as packed int4 (w4a8): 'qkernel_int4' int8, the
  kernel's shape with its last input axis halved, holds two 4-bit values per byte
  (`pack_int4`), unpacked to int8 at use; scales, input quantization and products as
  `Int8`."""
  STORED = ('qkernel_int4',)

  @nn.compact
  def weights(self) -> tuple[Array, Array, Array, Array | None]:
    n_in, _ = self._split()
    shape = list(self.kernel_shape)
    if shape[n_in - 1] % 2:
      raise ValueError(f'{self.site}: int4 needs an even input axis, got {self.kernel_shape}')
    shape[n_in - 1] //= 2
    packed = self.param('qkernel_int4', nn.with_logical_partitioning(
        nn.initializers.zeros_init(), self.kernel_axes), tuple(shape), jnp.int8)
    kernel_scale = self.param('kernel_scale', nn.with_logical_partitioning(
        nn.initializers.ones_init(), self.kernel_axes[n_in:]), self.kernel_shape[n_in:],
                              jnp.float32)
    input_scale = self.param('input_scale', nn.initializers.ones_init(), (), jnp.float32)
    return unpack_int4(packed, n_in - 1), kernel_scale, input_scale, self.bias_param()

  @staticmethod
  def dense_params(params: dict, **kind_fields) -> dict:
    scale = np.asarray(params['kernel_scale'])
    packed = np.asarray(params['qkernel_int4'])
    q = unpack_int4(jnp.asarray(packed), packed.ndim - scale.ndim - 1)
    kernel = np.asarray(q, np.float32) * scale
    return {'kernel': kernel, **({'bias': params['bias']} if 'bias' in params else {})}


projections.register('int8', lambda arg: {'cls': Int8, 'integer': arg != 'simulate'})
projections.register('int4', lambda arg: {'cls': Int4, 'integer': arg != 'simulate'})


def ptq(config, params: Mapping[str, Any], stats: Mapping[str, Mapping[str, float]],
        method: str = 'max', bits: int = 8) -> tuple[Any, dict]:
  """Converts calibrated projections to int8 (or packed int4) storage: (config, params).

  Args:
    config: the encoder's config.
    params: the encoder's params, or a TaskModel's (with an 'encoder' entry).
    stats: `calibrate`'s statistics, by encoder site.
    method: the activation clip: 'max', 'percentile' (99.99th) or 'mse'.
    bits: 8 (int8 kernels) or 4 (kernels on the symmetric 4-bit grid, two per byte;
      inputs stay int8: w4a8).

  Kernels get symmetric per-output-channel values; each site's input a static
  per-tensor scale clip / 127 (one for Q, K and V, which read the same tensor). The new
  config names those sites `int8` (or `int4`).
  """
  if bits not in (4, 8):
    raise ValueError(f'bits must be 4 or 8, got {bits}')
  if method not in CALIBRATIONS:
    raise ValueError(f'method must be one of {CALIBRATIONS}, got {method!r}')
  if not stats:
    raise ValueError('ptq: stats are empty, so nothing would be quantized; pass '
                     "`calibrate`'s statistics of this model")
  params = nn.meta.unbox(params)
  task = 'encoder' in params
  flat = flax.traverse_util.flatten_dict(params['encoder'] if task else params, sep='/')
  # A site without a dense kernel: stats of another model, or this one already int8.
  unknown = sorted(site for site in stats if f'{site}/kernel' not in flat)
  if unknown:
    quantized = [s for s in unknown if f'{s}/qkernel' in flat or f'{s}/qkernel_int4' in flat]
    raise ValueError(
        f'ptq: stats name {len(unknown)} site(s) with no dense kernel in params: '
        f'{unknown[:5]}' + (' (already quantized)' if quantized else
                            ' (not in this model; calibrate this model and pass its stats)'))
  lacking = sorted(site for site, s in stats.items() if method not in s)
  if lacking:
    raise ValueError(f'ptq: stats of {lacking[:5]} lack {method!r} (calibrate gives '
                     f'{CALIBRATIONS})')
  rules = []
  # Q, K and V read one tensor: one input scale (the largest clip), so they can run as
  # one product with the input quantized once (`Int8.fused`).
  same_input = lambda site: re.sub(r'/(query|key|value)$', '/qkv', site)
  clips: dict[str, float] = {}
  for site, site_stats in stats.items():
    clips[same_input(site)] = max(clips.get(same_input(site), 0.0), site_stats[method])
  for site in sorted(stats):
    kernel = np.asarray(flat.pop(f'{site}/kernel'), np.float32)
    n_in = 2 if site.endswith('attention/out') else 1
    reduce = tuple(range(n_in))
    top = 2 ** (bits - 1) - 1
    scale = np.abs(kernel).max(axis=reduce) / top
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(kernel / scale), -top, top).astype(np.int8)
    if bits == 4:
      flat[f'{site}/qkernel_int4'] = pack_int4(q, n_in - 1)
    else:
      flat[f'{site}/qkernel'] = q
    flat[f'{site}/kernel_scale'] = scale
    clip = clips[same_input(site)] if clips[same_input(site)] > 0 else 1.0
    flat[f'{site}/input_scale'] = np.asarray(clip / 127.0, np.float32)
    rules.append((f'(.*/)?{re.escape(site)}', f'int{bits}'))
  encoder = flax.traverse_util.unflatten_dict(flat, sep='/')
  # A QAT model's fake-quantizing projection products are what the integer kernels now
  # do for real; left in place they would also wrap the int8 products (and the head's
  # float ones) in simulation. Activation-product rules (attention) and hooks stay.
  kept = tuple(r for r in config.products if not r[1].startswith('fake_quant:'))
  if len(kept) < len(config.products):
    logging.info('ptq: dropped the fake-quant projection products %s (QAT)',
                 [r for r in config.products if r not in kept])
  new_config = config.replace(projections=tuple(rules) + tuple(config.projections),
                              products=kept)
  return new_config, ({**params, 'encoder': encoder} if task else encoder)
