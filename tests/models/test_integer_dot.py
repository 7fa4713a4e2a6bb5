"""integer_dot: int8 products through u8 x s8 kernels equal the int32 einsum exactly."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import integer_dot, mixed_matmul

SPECS = [('bsi,io->bso', (2, 5, 16), (16, 8)),          # projections
         ('bsi,itnd->bstnd', (2, 5, 16), (16, 3, 2, 4)),  # fused Q/K/V kernel layout
         ('bhqd,hde->bqe', (2, 3, 5, 4), (3, 4, 6)),      # attention output: 2 contracted
         ('bhqd,bhkd->bhqk', (2, 3, 5, 4), (2, 3, 6, 4)),  # batch axes: the s8 x s8 product
         ('bsi,oi->bos', (2, 5, 16), (8, 16))]            # output order not lhs, rhs: s8 x s8


def _int8(shape, seed):
  # The full int8 range, -128 included: the u8 shift must not overflow.
  return np.random.default_rng(seed).integers(-128, 128, shape).astype(np.int8)


@pytest.mark.parametrize('spec,a_shape,b_shape', SPECS)
def test_s8_einsum_is_exact(spec, a_shape, b_shape):
  a, b = _int8(a_shape, 0), _int8(b_shape, 1)
  want = np.einsum(spec, a.astype(np.int64), b.astype(np.int64))
  got = jax.jit(lambda x, y: integer_dot.s8_einsum(spec, x, y))(a, b)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), want)
  # The product seam's int8 path is the same function.
  np.testing.assert_array_equal(np.asarray(mixed_matmul.einsum(spec, a, b)), want)


def test_extreme_values_and_a_long_contraction_stay_exact():
  a = np.full((2, 4096), -128, np.int8)
  b = np.full((4096, 3), -128, np.int8)
  b[:, 1] = 127
  got = np.asarray(jax.jit(lambda x, y: integer_dot.s8_einsum('bi,io->bo', x, y))(a, b))
  np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_the_cpu_path_uses_the_mixed_type_product():
  """On CPU the compiled module multiplies u8 x s8 directly (no widening of either
  operand to int32), which is what reaches the fast integer kernels."""
  a, b = _int8((4, 16), 0), _int8((16, 8), 1)
  lowered = jax.jit(lambda x, y: integer_dot.s8_einsum('bi,io->bo', x, y)).lower(a, b)
  text = lowered.as_text()
  assert 'tensor<4x16xui8>, tensor<16x8xi8>) -> tensor<4x8xi32>' in text


def test_u8s8_dot_checks_its_operand_types():
  with pytest.raises(TypeError, match='uint8 x int8'):
    integer_dot.u8s8_dot(jnp.ones((2, 3), jnp.int8), jnp.ones((3, 2), jnp.int8),
                         ((1,), (0,)))
  eager = integer_dot.u8s8_dot(jnp.full((2, 3), 200, jnp.uint8), jnp.ones((3, 2), jnp.int8),
                               ((1,), (0,)))
  np.testing.assert_array_equal(np.asarray(eager), np.full((2, 2), 600))
