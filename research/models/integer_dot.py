"""int8 x int8 -> int32 products through XLA:CPU's fast u8 x s8 kernels.

    y = s8_einsum('bsi,io->bso', x_int8, w_int8)   # == jnp.einsum(..., int32), exactly

CPU integer dot instructions multiply *unsigned* by signed bytes (x86 `vpmaddubsw` on
AVX2, `vpdpbusd` on AVX512-VNNI / AVX-VNNI; AMX takes both), and YNNPACK's u8 x s8
kernels use them directly; its s8 x s8 kernels do not. jax cannot ask for a u8 x s8
product: `lax.dot_general` converts operands of different types to a common one (here
int32), and XLA then runs its generic integer loop. So `u8s8_dot` is a primitive whose
CPU lowering emits the mixed-type `dot_general` XLA accepts, and `s8_einsum` computes
a signed product with it by shifting the left operand into u8 (x + 128) and
subtracting 128 times the right operand's sums over the contracted axes:

    sum_k x_k w_k = sum_k (x_k + 128) w_k - 128 sum_k w_k

which is exact in int32 for any contracted length below 2^31 / (255 * 128) ~ 65k. On a
2-core AVX512-VNNI EPYC, [1024, 384] x [384, 1536]: u8 x s8 652 GOP/s, s8 x s8 262,
f32 184, bf16 (f32 accumulation) 389 (docs/results.md, "int8 products"). Other
backends and shapes `s8_einsum` does not cover (batch axes, an output order other than
lhs-free then rhs-free) use the plain s8 x s8 product.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jax._src.lib.mlir.dialects import hlo  # pylint: disable=g-direct-tensorflow-import

u8s8_dot_p = Primitive('u8s8_dot')


def _shape(lhs, rhs, contracting):
  (lc, rc) = contracting
  free_l = [d for i, d in enumerate(lhs.shape) if i not in lc]
  free_r = [d for i, d in enumerate(rhs.shape) if i not in rc]
  return tuple(free_l + free_r)


def _abstract(lhs, rhs, *, contracting):
  return jax.core.ShapedArray(_shape(lhs, rhs, contracting), jnp.int32)


def _lower_cpu(ctx, lhs, rhs, *, contracting):
  out = mlir.aval_to_ir_type(ctx.module_context, ctx.avals_out[0])
  dims = hlo.DotDimensionNumbers.get(
      lhs_batching_dimensions=[], rhs_batching_dimensions=[],
      lhs_contracting_dimensions=list(contracting[0]),
      rhs_contracting_dimensions=list(contracting[1]))
  return [hlo.dot_general(out, lhs, rhs, dims)]


def _reference(lhs, rhs, *, contracting):
  """Any backend: the same product with both operands widened to int32."""
  return jax.lax.dot_general(lhs.astype(jnp.int32), rhs.astype(jnp.int32),
                             (contracting, ((), ())), preferred_element_type=jnp.int32)


u8s8_dot_p.def_abstract_eval(_abstract)
u8s8_dot_p.def_impl(_reference)
mlir.register_lowering(u8s8_dot_p, mlir.lower_fun(_reference, multiple_results=False))
mlir.register_lowering(u8s8_dot_p, _lower_cpu, platform='cpu')


def u8s8_dot(lhs: jax.Array, rhs: jax.Array, contracting) -> jax.Array:
  """uint8 x int8 -> int32 `dot_general` without batch axes; `contracting` is
  ((lhs axes), (rhs axes)); output axes: lhs free, then rhs free."""
  if lhs.dtype != jnp.uint8 or rhs.dtype != jnp.int8:
    raise TypeError(f'u8s8_dot takes uint8 x int8, got {lhs.dtype} x {rhs.dtype}')
  contracting = (tuple(contracting[0]), tuple(contracting[1]))
  return u8s8_dot_p.bind(lhs, rhs, contracting=contracting)


@functools.lru_cache(maxsize=None)
def _plan(spec: str):
  """(lhs contracted axes, rhs contracted axes) if `spec` maps onto `u8s8_dot`, else None."""
  inputs, out = spec.replace(' ', '').split('->')  # (mixed_matmul imports this module)
  lhs, rhs = inputs.split(',')
  shared = [i for i in lhs if i in rhs]
  if any(i in out for i in shared) or len(set(lhs + rhs)) != len(lhs + rhs) - len(shared):
    return None  # batch axes or repeated indices
  free = ''.join(i for i in lhs if i not in rhs) + ''.join(i for i in rhs if i not in lhs)
  if free != out:
    return None
  return (tuple(lhs.index(i) for i in shared), tuple(rhs.index(i) for i in shared))


def s8_einsum(spec: str, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
  """`jnp.einsum(spec, lhs, rhs, preferred_element_type=int32)` for int8 operands,
  through the u8 x s8 kernels on CPU (bit-identical)."""
  plan = _plan(spec)
  if plan is None or jax.default_backend() != 'cpu':
    return jnp.einsum(spec, lhs, rhs, preferred_element_type=jnp.int32)
  shifted = (lhs.astype(jnp.int16) + 128).astype(jnp.uint8)
  acc = u8s8_dot(shifted, rhs, plan)
  sums = jnp.sum(rhs.astype(jnp.int32), axis=plan[1])  # rhs free axes, the output's tail
  return acc - 128 * sums
