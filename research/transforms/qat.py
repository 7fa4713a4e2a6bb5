"""Quantization-aware training: fake quantization with a straight-through estimator,
through the product and hook seams, and the QAT technique of the trainer.

    y = fake_quant(x, bits=8, axes=(0,))            # quantize-dequantize, STE gradient
    config = config.replace(products=qat_rules('w8,a8'))   # quantization-aware training
    --config.quant=w8,a8 [--config.quant_attention] [--config.quant_full]   # the trainer

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
and a hook 'fake_quant' (`research/models/hooks.py`) for fully quantized BERT.
`qat_rules(spec)` returns the product rules for `EncoderConfig.products`;
`QAT` is the trainer technique that adds them (`research/transforms/technique.py`).
SPEC is comma-separated: 'w<bits>' (weights), 'a<bits>' (activations; 0 or absent =
float), 'asym' (asymmetric activations), 'token' (one activation scale per token instead
of per tensor). The product keeps the default's bf16 -> float32 accumulation: it
quantizes the operands, then multiplies with `mixed_matmul`. Post-training quantization
to real int8 kernels is `research/transforms/quantize.py`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax
import jax.numpy as jnp

from research import specs
from research.models import hooks, mixed_matmul, products
from research.transforms.technique import Technique

Array = jax.Array

# Sites that multiply two activations.
ATTENTION_PRODUCTS = r'.*/attention/(scores|context)'


def symmetric_scale(xf: jax.Array, bits: int, axes: Sequence[int]) -> jax.Array:
  """max|xf| / (2^(bits-1) - 1) over `axes` (keepdims; 1 where all are 0): the one rule
  of the symmetric grid, which the integer-only model also reads its integers by
  (`integer_kernels.grid`), so it recovers the twin's values exactly."""
  scale = jnp.max(jnp.abs(xf), axis=tuple(axes), keepdims=True) / (2.0 ** (bits - 1) - 1)
  return jnp.where(scale > 0, scale, 1.0)


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
    scale = symmetric_scale(xf, bits, axes)
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
    for token in specs.items(text, what='quantization spec'):
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
    x_term, k_term, out = mixed_matmul.parse_einsum(einsum)
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
    a, b, out = mixed_matmul.parse_einsum(einsum)
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


# What fully quantized BERT quantizes beyond the projections, in groups an ablation can
# take apart (`quant_full_sites`): group -> hook-site regex (None: the attention products,
# which are products, not hooks).
FULL_QUANT_GROUPS = {
    'attention': None,
    'embeddings': r'(.*/)?embeddings/output',
    'softmax': r'(.*/)?attention/softmax_in',
    'gelu': r'(.*/)?mlp/gelu_(in|out)',
    'layernorm': r'(.*/)?(attention_norm|output_norm|final_norm)/(input|output)',
}


# The default: every group, LayerNorm inputs and outputs with one scale per token. On
# SST-2 (docs/results.md, issue 29) per-tensor LayerNorm scales cost 3.4 of the 4.5
# points fully quantized w8a8 lost (the residual stream's outlier coordinates set one
# scale for all tokens); per-token scales lose nothing, and a per-row input scale is
# what an integer LayerNorm wants anyway (it cancels in the normalization).
DEFAULT_FULL_SITES = 'attention,embeddings,softmax,gelu,layernorm:token'


def parse_full_sites(text: str) -> dict[str, tuple[int | None, bool]]:
  """'' (`DEFAULT_FULL_SITES`) or 'group[:bits][:token],...' -> {group: (bits or None,
  per_token)}.

  bits overrides the spec's activation bits for that group (e.g. 'layernorm:16' keeps the
  LayerNorms at 16 bits, higher precision only where an ablation shows it matters);
  'token' gives every row of the last axis its own scale (per-token ranges where
  outliers live)."""
  text = text.strip() or DEFAULT_FULL_SITES
  out = {}
  for item in specs.items(text, what='quant_full_sites'):
    group, *options = item.split(':')
    if group not in FULL_QUANT_GROUPS:
      raise ValueError(f'quant_full_sites: unknown group {group!r} in {text!r}; groups: '
                       f'{sorted(FULL_QUANT_GROUPS)} (optionally :<bits> and :token)')
    bits, token = None, False
    for option in options:
      if option == 'token':
        token = True
      elif option.isdigit() and 2 <= int(option) <= 16:
        bits = int(option)
      else:
        raise ValueError(f'quant_full_sites: {item!r}: options are :<bits in 2..16> and '
                         ':token')
    out[group] = (bits, token)
  return out


def full_quant_rules(spec: str, sites: str = '') -> tuple[tuple[str, str], ...]:
  """Hook rules that, with `qat_rules(spec, attention=True)`, fake-quantize everything
  fully quantized BERT does: embedding tables (per row), the embedding output, the
  softmax input and output (the output on an asymmetric grid: it is never negative),
  the GELU input and output and every LayerNorm's input and output (per token), all at
  the spec's activation bits (weight bits for the tables). `sites` (`parse_full_sites`)
  keeps only some groups, at other bits or with per-token scales; '' = all, as above
  (Liu et al.'s per-tensor LayerNorm scales: 'attention,embeddings,softmax,gelu,
  layernorm')."""
  parsed = QuantSpec.parse(spec)
  bits = parsed.activation_bits or 8
  table_bits = parsed.weight_bits or bits
  rules = []
  for group, (group_bits, token) in parse_full_sites(sites).items():
    if FULL_QUANT_GROUPS[group] is None:
      continue
    b = group_bits or bits
    hook_spec = f'a{b}' + (',asym' if parsed.asymmetric else '') + (',token' if token else '')
    if group == 'embeddings':
      rules.append((EMBEDDING_TABLES, f'fake_quant:a{group_bits or table_bits},token'))
    if group == 'softmax':
      rules.append((r'(.*/)?attention/softmax_out',
                    f'fake_quant:a{b},asym' + (',token' if token else '')))
    rules.append((FULL_QUANT_GROUPS[group], f'fake_quant:{hook_spec}'))
  return tuple(rules)


class QuantizationAwareTraining(Technique):
  """`config.quant` = a SPEC ('' = off): every projection's product fake-quantizes its
  operands; `quant_attention` also the attention score and context products;
  `quant_full` everything fully quantized BERT does (attention products and the hooks
  of `full_quant_rules`)."""
  name = 'qat'
  config_keys = ('quant', 'quant_attention', 'quant_full', 'quant_full_sites')

  def active(self, config) -> bool:
    return bool(config.quant)

  def check(self, config) -> None:
    if config.quant:
      qat_rules(config.quant)  # a spec that is malformed or quantizes nothing fails here
    elif config.quant_attention or config.quant_full:
      raise ValueError('config.quant_attention / quant_full need config.quant (e.g. w8,a8)')
    sites = config.get('quant_full_sites', '')
    if sites:
      if not config.quant_full:
        raise ValueError('config.quant_full_sites needs config.quant_full=True')
      parse_full_sites(sites)

  def encoder(self, config, encoder_config):
    full = config.quant_full
    sites = config.get('quant_full_sites', '') if full else ''
    attention = config.quant_attention or (full and 'attention' in parse_full_sites(sites))
    rules = qat_rules(config.quant, attention)
    encoder_config = encoder_config.replace(products=rules + encoder_config.products)
    if full:
      encoder_config = encoder_config.replace(
          hooks=full_quant_rules(config.quant, sites) + encoder_config.hooks)
    return encoder_config


TECHNIQUE = QuantizationAwareTraining()
