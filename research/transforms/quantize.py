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
import re
from typing import Sequence

import jax
import jax.numpy as jnp

from research.models import mixed_matmul, products

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
    raise ValueError(f'bits must be in 2..16, got {bits}')
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
        fields['weight_bits' if match.group(1) == 'w' else 'activation_bits'] = int(match.group(2))
      elif token == 'asym':
        fields['asymmetric'] = True
      elif token == 'token':
        fields['per_token'] = True
      else:
        raise ValueError(f'quantization spec {text!r}: unknown part {token!r} (expected '
                         "'w<bits>', 'a<bits>', 'asym', 'token')")
    spec = cls(**fields)
    for bits in (spec.weight_bits, spec.activation_bits):
      if bits and not 2 <= bits <= 16:
        raise ValueError(f'quantization spec {text!r}: bits must be 0 or in 2..16')
    return spec


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
  QuantSpec.parse(spec)  # fail now on a bad spec
  attention_rule = (ATTENTION_PRODUCTS, f'fake_quant_act:{spec}' if attention else 'default')
  return (attention_rule, ('.*', f'fake_quant:{spec}'))
