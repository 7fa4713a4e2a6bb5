"""Matrix products for bf16 / f16 compute: low-precision inputs, float32 accumulation.

`einsum(spec, a, b, bias=None, out_dtype=None)` is `jnp.einsum` (+ bias) when either
input is float32. When both are bfloat16 (or float16) it asks XLA for a float32 result
(`preferred_element_type`), adds the bias in float32 and casts once, in the forward
pass *and* in both backward products, which take the cotangent in the input dtype.
The bias gradient is summed in float32.

Why a custom VJP: on XLA:CPU a bf16 x bf16 -> bf16 dot runs at about f32 speed or
slower, while bf16 x bf16 -> f32 reaches the AMX / AVX512-BF16 kernels (measured
~1 TFLOP/s vs ~0.2 for f32 on a 2-core Sapphire Rapids VM, 2048x384x1536). Plain
autodiff of the forward hands the backward an f32 cotangent, so both backward products
would fall back to the slow f32 path, and a bf16 bias add makes XLA:CPU sum the bias
gradient with a slow tree reduction (~20 ms per bias at batch 32 x 64). Accumulating
in f32 is also what GPUs and TPUs do for bf16 matmuls.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from research.models import integer_dot

_LOW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def parse_einsum(spec: str) -> tuple[str, str, str]:
  """(lhs, rhs, output) index strings of a two-operand einsum 'ab,bc->ac' (the one
  parser of einsum specs: projections, quantization and profiles read them here)."""
  inputs, out = spec.replace(' ', '').split('->')
  lhs, rhs = inputs.split(',')
  return lhs, rhs, out


def _parse(spec: str) -> tuple[str, str, str]:
  lhs, rhs, out = parse_einsum(spec)
  for name, term, other in (('lhs', lhs, rhs), ('rhs', rhs, lhs)):
    if len(set(term)) != len(term):
      raise ValueError(f'einsum {spec!r}: repeated index in {name}')
    # An index summed within one operand only would need a broadcast in the backward.
    if not set(term) <= set(out) | set(other):
      raise ValueError(f'einsum {spec!r}: every {name} index must appear elsewhere')
  return lhs, rhs, out


def _f32_product(spec: str, a, b):
  """`einsum` with float32 accumulation, laid out for XLA:CPU's fast low-precision dots.

  XLA:CPU hands a bf16 dot to its YNNPACK kernels only when the left operand's single
  contracted axis is its last one; otherwise it converts both operands to f32 and runs
  the slow generic dot (3.2 ms vs 1.0 ms for the attention backward's [32,12,64,64] x
  [32,12,64,32] product). An explicit transpose does not help: XLA folds it back into
  the dot. Reversing the contracted axis in both operands leaves the sum unchanged but
  stops that folding, so the transposed copy stays and the fast kernel runs (1.9 ms
  with the copy). The operand order is fixed here (`lax.dot_general`), because
  `jnp.einsum` may swap the operands and undo the layout. Applied on the CPU backend
  only; GPU and TPU matmul libraries take transposed operands natively.
  """
  lhs, rhs, out = _parse(spec)
  contracted = [i for i in lhs if i in rhs and i not in out]
  batch = [i for i in out if i in lhs and i in rhs]
  if len(contracted) == 1 and jax.default_backend() == 'cpu':
    (c,) = contracted
    for x, x_term, y, y_term in ((a, lhs, b, rhs), (b, rhs, a, lhs)):
      free_x = [i for i in x_term if i not in batch and i != c]
      free_y = [i for i in y_term if i not in batch and i != c]
      if out != ''.join(batch + free_x + free_y):
        continue
      want = ''.join(batch + free_x) + c
      if x_term != want:
        x = jnp.flip(jnp.einsum(f'{x_term}->{want}', x), axis=-1)
        y = jnp.flip(y, axis=y_term.index(c))
      dims = (((len(want) - 1,), (y_term.index(c),)),
              (tuple(range(len(batch))), tuple(y_term.index(i) for i in batch)))
      return jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _low_einsum(spec: str, a, b, bias, out_dtype):
  y = _f32_product(spec, a, b)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(out_dtype)


def _fwd(spec, a, b, bias, out_dtype):
  return _low_einsum(spec, a, b, bias, out_dtype), (a, b, bias)


def _bwd(spec, out_dtype, residuals, g):
  del out_dtype
  a, b, bias = residuals
  lhs, rhs, out = _parse(spec)
  dbias = None
  if bias is not None:
    g32 = g.astype(jnp.float32)
    dbias = g32.sum(tuple(range(g.ndim - bias.ndim))).astype(bias.dtype)
  g = g.astype(a.dtype)
  da = _f32_product(f'{out},{rhs}->{lhs}', g, b).astype(a.dtype)
  db = _f32_product(f'{lhs},{out}->{rhs}', a, g).astype(b.dtype)
  return da, db, dbias


_low_einsum.defvjp(_fwd, _bwd)


def einsum(spec: str, a: jax.Array, b: jax.Array, bias: jax.Array | None = None,
           out_dtype=None) -> jax.Array:
  """`jnp.einsum(spec, a, b) + bias`, accumulated in f32 when a and b are bf16/f16.

  Two int8 operands accumulate in int32 (the integer inference path, through the
  u8 x s8 kernels on CPU: `integer_dot.s8_einsum`); the result is int32 unless
  `out_dtype` says otherwise, and there is no gradient.

  Args:
    spec: a two-operand einsum; every index of one operand appears in the other or in
      the output (no index is summed within one operand alone).
    a, b: the operands.
    bias: optional, broadcast against the output's trailing dimensions; it may stay
      float32 (it is added before the one cast to `out_dtype`).
    out_dtype: the result's dtype; defaults to a's dtype.
  """
  if jnp.dtype(a.dtype) == jnp.int8 and jnp.dtype(b.dtype) == jnp.int8:
    y = integer_dot.s8_einsum(spec, a, b)
    if bias is not None:
      y = y + bias.astype(y.dtype)
    return y.astype(out_dtype or jnp.int32)
  out_dtype = jnp.dtype(out_dtype or a.dtype)
  if jnp.dtype(a.dtype) in _LOW and a.dtype == b.dtype:
    _parse(spec)
    return _low_einsum(spec, a, b, bias, out_dtype)
  y = jnp.einsum(spec, a, b)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y.astype(out_dtype)
