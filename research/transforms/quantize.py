"""Fake quantization with a straight-through estimator, and QAT through the product seam.

    y = fake_quant(x, bits=8, axes=(0,))            # quantize-dequantize, STE gradient
    config = config.replace(products=qat_rules('w8,a8'))   # quantization-aware training

`fake_quant` rounds to a `bits`-bit integer grid and maps back (symmetric: scale =
max|x| / (2^(b-1) - 1); asymmetric: scale = (max - min) / (2^b - 1) with a zero point),
with scales over the given reduction axes (per-tensor, per-channel, per-token). The
gradient passes straight through (Bengio et al. 2013; Jacob et al. 2018), so training
sees the rounding in the forward pass only.

QAT needs no change to the encoder or trainer: importing this module registers two
products (`research/models/products.py`):
  fake_quant:SPEC      for projections: the right operand is the kernel (per output
                       channel, symmetric), the left the activations;
  fake_quant_act:SPEC  for products of two activations (attention scores, context);
and `qat_rules(spec)` returns the product rules for `EncoderConfig.products` (the
trainer's `--config.quant=w8,a8`). SPEC is comma-separated: 'w<bits>' (weights),
'a<bits>' (activations; 0 or absent = float), 'asym' (asymmetric activations),
'token' (one activation scale per token instead of per tensor). The product keeps the
default's bf16 -> float32 accumulation: it quantizes the operands, then multiplies
with `mixed_matmul`.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import hooks, mixed_matmul, products, projections

Array = jax.Array

# Sites that multiply two activations.
ATTENTION_PRODUCTS = r'.*/attention/(scores|context)'


def fake_quant(x: jax.Array, bits: int, axes: Sequence[int] | None = None,
               symmetric: bool = True) -> jax.Array:
  """Quantize-dequantize `x` to `bits` bits; the gradient is the identity (STE).

  Args:
    x: the array.
    bits: 2..16.
    axes: axes the scale is shared over (None = all: one scale per tensor); e.g. the
      input axes of a kernel give one scale per output channel.
    symmetric: a zero-centred grid (weights) or a min/max grid with a zero point.
  """
  if not 2 <= bits <= 16:
    raise ValueError(f'fake_quant: bits must be in 2..16, got {bits}')
  axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
  xf = x.astype(jnp.float32)
  if symmetric:
    top = 2.0 ** (bits - 1) - 1
    scale = jnp.max(jnp.abs(xf), axis=axes, keepdims=True) / top
    scale = jnp.where(scale > 0, scale, 1.0)
    q = jnp.clip(jnp.round(xf / scale), -top, top) * scale
  else:
    levels = 2.0 ** bits - 1
    lo = jnp.min(xf, axis=axes, keepdims=True)
    hi = jnp.max(xf, axis=axes, keepdims=True)
    scale = jnp.where(hi > lo, (hi - lo) / levels, 1.0)
    zero = jnp.round(-lo / scale)
    q = (jnp.clip(jnp.round(xf / scale) + zero, 0, levels) - zero) * scale
  return (xf + jax.lax.stop_gradient(q - xf)).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  weight_bits: int = 0
  activation_bits: int = 0
  asymmetric: bool = False
  per_token: bool = False

  @classmethod
  def parse(cls, text: str) -> 'QuantSpec':
    fields = {}
    for token in filter(None, (t.strip() for t in text.split(','))):
      match = re.fullmatch(r'([wa])(\d+)', token)
      if match:
        bits = int(match.group(2))
        if bits and not 2 <= bits <= 16:  # 1 bit: a symmetric grid with no level but 0
          raise ValueError(f'quantization spec {text!r}: {token!r} asks for {bits} bits; '
                           'bits must be 0 (float) or in 2..16')
        fields['weight_bits' if match.group(1) == 'w' else 'activation_bits'] = bits
      elif token == 'asym':
        fields['asymmetric'] = True
      elif token == 'token':
        fields['per_token'] = True
      else:
        raise ValueError(f'quantization spec {text!r}: unknown part {token!r} (expected '
                         "'w<bits>', 'a<bits>', 'asym', 'token')")
    return cls(**fields)


def _parse_einsum(spec: str) -> tuple[str, str, str]:
  inputs, out = spec.replace(' ', '').split('->')
  lhs, rhs = inputs.split(',')
  return lhs, rhs, out


def _activation(x, term: str, other: str, out: str, spec: QuantSpec):
  if not spec.activation_bits:
    return x
  # Per token: the scale is shared over the contracted (feature) axes only.
  axes = ([i for i, c in enumerate(term) if c in other and c not in out]
          if spec.per_token else None)
  return fake_quant(x, spec.activation_bits, axes, symmetric=not spec.asymmetric)


def projection_product(text: str) -> products.Product:
  """The product for projections: kernel per output channel, activations per tensor/token."""
  spec = QuantSpec.parse(text)

  def product(einsum, lhs, rhs, *, bias=None, out_dtype=None):
    x_term, k_term, out = _parse_einsum(einsum)
    lhs = _activation(lhs, x_term, k_term, out, spec)
    if spec.weight_bits:
      contracted = [i for i, c in enumerate(k_term) if c not in out]
      rhs = fake_quant(rhs, spec.weight_bits, contracted, symmetric=True)
    return mixed_matmul.einsum(einsum, lhs, rhs, bias=bias, out_dtype=out_dtype)
  return product


def activation_product(text: str) -> products.Product:
  """The product for two activations (attention scores and context)."""
  spec = QuantSpec.parse(text)

  def product(einsum, lhs, rhs, *, bias=None, out_dtype=None):
    a, b, out = _parse_einsum(einsum)
    lhs, rhs = _activation(lhs, a, b, out, spec), _activation(rhs, b, a, out, spec)
    return mixed_matmul.einsum(einsum, lhs, rhs, bias=bias, out_dtype=out_dtype)
  return product


products.register('fake_quant', projection_product)
products.register('fake_quant_act', activation_product)


def qat_rules(spec: str, attention: bool = False) -> tuple[tuple[str, str], ...]:
  """Product rules that fake-quantize every projection (and, optionally, the attention
  products' activations); embeddings and LayerNorms stay float."""
  parsed = QuantSpec.parse(spec)  # fail now on a bad spec
  if not (parsed.weight_bits or parsed.activation_bits):
    # Otherwise a QAT run would train in float while its config says it is quantized.
    raise ValueError(f'quantization spec {spec!r} quantizes nothing: give w<bits> and/or '
                     'a<bits> with bits in 2..16 (e.g. w8,a8)')
  attention_rule = (ATTENTION_PRODUCTS, f'fake_quant_act:{spec}' if attention else 'default')
  return (attention_rule, ('.*', f'fake_quant:{spec}'))


# -- Fully quantized BERT (Liu, Li & Cheng 2021): the activations between products too --

# Hook sites (`research/models/hooks.py`) a fully quantized model fake-quantizes.
FULL_QUANT_SITES = (r'(.*/)?(embeddings/output|attention/softmax_(in|out)|mlp/gelu_(in|out)|'
                    r'(attention_norm|output_norm|final_norm)/(input|output))')
EMBEDDING_TABLES = r'(.*/)?embeddings/\w+_embeddings/table'


def hook(text: str) -> hooks.Hook:
  """A fake-quantizing hook: 'a<bits>[,asym][,token]' ('token': one scale per row of
  the last axis, e.g. per embedding row or per token)."""
  spec = QuantSpec.parse(text)
  bits = spec.activation_bits or spec.weight_bits
  if not bits:
    raise ValueError(f'quantization hook {text!r} names no bits (e.g. a8)')
  axes = (-1,) if spec.per_token else None
  return lambda x: fake_quant(x, bits, axes, symmetric=not spec.asymmetric)


hooks.register('fake_quant', hook)


def full_quant_rules(spec: str) -> tuple[tuple[str, str], ...]:
  """Hook rules that, with `qat_rules(spec, attention=True)`, fake-quantize everything
  fully quantized BERT does: embedding tables (per row), the embedding output, the
  softmax input and output (the output on an asymmetric grid: it is never negative),
  the GELU input and output and every LayerNorm's input and output, all at the spec's
  activation bits (weight bits for the tables)."""
  parsed = QuantSpec.parse(spec)
  bits = parsed.activation_bits or 8
  table_bits = parsed.weight_bits or bits
  act = f'a{bits}' + (',asym' if parsed.asymmetric else '')
  return ((EMBEDDING_TABLES, f'fake_quant:a{table_bits},token'),
          (r'.*/attention/softmax_out', f'fake_quant:a{bits},asym'),
          (FULL_QUANT_SITES, f'fake_quant:{act}'))


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
  def dense_params(params: dict) -> dict:
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
  def dense_params(params: dict) -> dict:
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
