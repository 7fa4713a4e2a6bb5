"""mixed_matmul.einsum: f32 path is jnp.einsum; bf16 path accumulates in f32, also backward."""
from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import mixed_matmul

SPECS = [('bsi,io->bso', (2, 5, 8), (8, 6), (6,)),
         ('bhqd,bhkd->bhqk', (2, 3, 5, 4), (2, 3, 7, 4), None),
         ('bhqd,hde->bqe', (2, 3, 5, 4), (3, 4, 8), (8,)),
         ('bsi,itnd->bstnd', (2, 5, 8), (8, 3, 2, 4), (3, 2, 4)),
         # The attention backward's products, whose left operand is laid out for XLA:CPU:
         ('bhqk,bhqd->bhkd', (2, 3, 5, 7), (2, 3, 5, 4), None),
         ('bhqd,bhqk->bhkd', (2, 3, 5, 4), (2, 3, 5, 7), None),  # operands swapped
         ('qbd,kbd->bqk', (5, 2, 4), (7, 2, 4), None)]  # batch axis not leading


def _operands(a_shape, b_shape, bias_shape, seed=0):
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.normal(size=a_shape), jnp.float32)
  b = jnp.asarray(rng.normal(size=b_shape), jnp.float32)
  bias = None if bias_shape is None else jnp.asarray(rng.normal(size=bias_shape), jnp.float32)
  return a, b, bias


def _reference(spec, a, b, bias):
  y = jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  return y if bias is None else y + bias


@pytest.mark.parametrize('spec,a_shape,b_shape,bias_shape', SPECS)
def test_float32_is_plain_einsum(spec, a_shape, b_shape, bias_shape):
  a, b, bias = _operands(a_shape, b_shape, bias_shape)
  expected = jnp.einsum(spec, a, b) + (0 if bias is None else bias)
  np.testing.assert_array_equal(mixed_matmul.einsum(spec, a, b, bias=bias), expected)


@pytest.mark.parametrize('spec,a_shape,b_shape,bias_shape', SPECS)
def test_bfloat16_forward_and_gradients_match_float32(spec, a_shape, b_shape, bias_shape):
  a, b, bias = _operands(a_shape, b_shape, bias_shape)
  a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  y = mixed_matmul.einsum(spec, a16, b16, bias=bias, out_dtype=jnp.float32)
  assert y.dtype == jnp.float32
  # f32 accumulation of the bf16-rounded inputs: only summation order differs.
  np.testing.assert_allclose(y, _reference(spec, a16, b16, bias), rtol=1e-5, atol=1e-5)
  assert mixed_matmul.einsum(spec, a16, b16).dtype == jnp.bfloat16

  cot = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
  args = (a16, b16) if bias is None else (a16, b16, bias)

  def ours(*xs):
    return (mixed_matmul.einsum(spec, xs[0], xs[1], bias=xs[2] if len(xs) > 2 else None,
                                out_dtype=jnp.float32) * cot).sum()

  def ref(*xs):
    xs32 = [x.astype(jnp.float32) for x in xs]
    return (_reference(spec, xs32[0], xs32[1], xs32[2] if len(xs) > 2 else None) * cot).sum()

  got = jax.grad(ours, argnums=tuple(range(len(args))))(*args)
  want = jax.grad(ref, argnums=tuple(range(len(args))))(*args)
  for g, w, x in zip(got, want, args):
    assert g.dtype == x.dtype
    scale = float(jnp.abs(w).max())
    # The cotangent is rounded to bf16 before the backward products (8-bit mantissa).
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), atol=2e-2 * scale)


def _all_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _all_eqns(sub)


def test_bfloat16_backward_products_stay_low_precision():
  """The point of the custom VJP: both backward dots take bf16 inputs, f32 results."""
  a, b, bias = _operands((2, 5, 8), (8, 6), (6,))
  a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  loss = lambda a, b: mixed_matmul.einsum('bsi,io->bso', a, b, bias=bias).astype(
      jnp.float32).sum()
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(a16, b16)
  dots = [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name == 'dot_general']
  assert len(dots) >= 3, jaxpr
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16], eqn
    assert eqn.outvars[0].aval.dtype == jnp.float32, eqn


@pytest.mark.parametrize('spec', ['bii,io->bo', 'bsi,io->bo', 'bs,io->bo'])
def test_unsupported_specs_are_named(spec):
  a16 = jnp.ones((2, 3, 3) if spec.startswith('bii') or spec.startswith('bsi') else (2, 3),
                 jnp.bfloat16)
  with pytest.raises(ValueError, match='einsum'):
    mixed_matmul.einsum(spec, a16, jnp.ones((3, 4), jnp.bfloat16))


@pytest.mark.parametrize('spec,a_shape,b_shape', [('bhqk,bhqd->bhkd', (2, 3, 5, 7), (2, 3, 5, 4)),
                                                  ('bhqd,bhqk->bhkd', (2, 3, 5, 4), (2, 3, 5, 7))])
def test_bfloat16_product_contracts_the_left_operands_last_axis(spec, a_shape, b_shape):
  """XLA:CPU's fast bf16 dot needs the left operand's contracted axis last."""
  a16 = jnp.ones(a_shape, jnp.bfloat16)
  b16 = jnp.ones(b_shape, jnp.bfloat16)
  jaxpr = jax.make_jaxpr(lambda a, b: mixed_matmul.einsum(spec, a, b))(a16, b16)
  (dot,) = [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name == 'dot_general']
  (lhs_contracting,), _ = dot.params['dimension_numbers'][0]
  assert lhs_contracting == dot.invars[0].aval.ndim - 1, dot
