"""Dropout from XLA's threefry kernel: rate, scaling, determinism, key types, bad rates."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.dropout import Dropout, dropout_mask


def _apply(rate, x, key, deterministic=False):
  return Dropout(rate).apply({}, x, deterministic, rngs={'dropout': key})


@pytest.mark.parametrize('shape', [(1000, 1000), (999, 1001)])  # 16- and 32-bit draws
@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_drop_fraction_and_scaling(rate, shape):
  x = jnp.ones(shape, jnp.float32)
  y = np.asarray(_apply(rate, x, jax.random.PRNGKey(0)))
  dropped = (y == 0).mean()
  sigma = np.sqrt(rate * (1 - rate) / y.size)
  assert abs(dropped - rate) < 5 * sigma, dropped
  np.testing.assert_allclose(np.unique(y[y != 0]), [1 / (1 - rate)], rtol=1e-6)
  # Inverted dropout keeps the mean.
  assert abs(y.mean() - 1.0) < 5 * sigma / (1 - rate)


def test_deterministic_and_zero_rate_are_identity():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(_apply(0.3, x, jax.random.PRNGKey(0), True), x)
  np.testing.assert_array_equal(_apply(0.0, x, jax.random.PRNGKey(0)), x)


def test_same_key_same_mask_other_key_other_mask():
  shape = (64, 64)
  a = dropout_mask(jax.random.PRNGKey(1), 0.5, shape)
  b = dropout_mask(jax.random.PRNGKey(1), 0.5, shape)
  c = dropout_mask(jax.random.PRNGKey(2), 0.5, shape)
  np.testing.assert_array_equal(a, b)
  assert (a != c).mean() > 0.4
  # New-style typed keys give the same mask as their raw key data.
  typed = jax.random.wrap_key_data(jax.random.PRNGKey(1))
  np.testing.assert_array_equal(dropout_mask(typed, 0.5, shape), a)


def test_bfloat16_input_keeps_dtype_and_gradient_is_the_mask():
  x = jnp.ones((8, 16), jnp.bfloat16)
  key = jax.random.PRNGKey(4)
  assert _apply(0.25, x, key).dtype == jnp.bfloat16
  grad = np.asarray(jax.grad(lambda v: _apply(0.25, v, key).sum())(jnp.ones((8, 16))))
  kept = np.asarray(_apply(0.25, jnp.ones((8, 16)), key)) != 0
  np.testing.assert_allclose(grad, np.where(kept, 1 / 0.75, 0.0), rtol=1e-6)


@pytest.mark.parametrize('rate', [-0.1, 1.0, 1.5])
def test_bad_rate_is_named(rate):
  with pytest.raises(ValueError, match='Dropout rate'):
    _apply(rate, jnp.ones((2, 2)), jax.random.PRNGKey(0))
