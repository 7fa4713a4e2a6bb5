"""Integer-only inference (I-BERT): integer kernels and the conversion of a fully
quantized model (research/transforms/integer_kernels.py, integer_only.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import Encoder, EncoderConfig, init_params, nonlinear
from research.transforms import integer_kernels as ik
from research.transforms import integer_only, qat

CONFIG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0,
                       attention_dropout=0.0)
FULL = CONFIG.replace(products=qat.qat_rules('w8,a8', attention=True),
                      hooks=qat.full_quant_rules('w8,a8'))


def _exact_gelu(x):
  return np.asarray(jax.nn.gelu(x, approximate=False))


def test_integer_square_root_is_the_floor_of_the_root():
  rng = np.random.default_rng(0)
  n = np.concatenate([np.arange(2000), rng.integers(0, 2 ** 31 - 1, 20000),
                      [46340 ** 2, 46340 ** 2 - 1, 2 ** 31 - 1]]).astype(np.int32)
  got = np.asarray(jax.jit(ik.isqrt)(n))
  np.testing.assert_array_equal(got, np.floor(np.sqrt(n.astype(np.float64))).astype(np.int64))


def test_integer_gelu_is_the_polynomial_fit_to_its_known_error():
  # I-BERT reports an L-inf error of 0.018 for i-GELU over the real line.
  for top in (8.0, 1.0, 40.0):  # the refinement shift adapts to the grid's scale
    q, scale = ik.grid(jnp.linspace(-top, top, 2001), 8)
    out, out_scale = ik.i_gelu(q, scale)
    assert out.dtype == jnp.int32
    x = np.asarray(q * scale)
    err = np.abs(np.asarray(out * out_scale) - _exact_gelu(x))
    assert err.max() < 0.02, (top, err.max())


def test_integer_softmax_sums_to_one_and_ignores_masked_keys():
  scores = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 40)) * 4
  q, scale = ik.grid(scores, 8)
  valid = jnp.arange(40)[None, None, :] < jnp.array([40, 25, 3])[:, None, None]
  probs = np.asarray(ik.i_softmax(q, scale, valid)) * 2.0 ** -ik.PROB_BITS
  ref = np.asarray(jax.nn.softmax(jnp.where(valid, q * scale, -jnp.inf), axis=-1))
  assert np.abs(probs - ref).max() < 0.005
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=2e-3)
  assert np.all(probs[~np.broadcast_to(np.asarray(valid), probs.shape)] == 0)


@pytest.mark.parametrize('bits,features', [(8, 384), (8, 32), (16, 768)])
def test_integer_layer_norm_matches_the_float_one(bits, features):
  x = jax.random.normal(jax.random.PRNGKey(1), (6, features)) + 0.3
  x = x.at[:, 5].multiply(25.0)  # an outlier coordinate, as BERT's residual stream has
  gamma = jax.random.uniform(jax.random.PRNGKey(2), (features,), minval=0.1, maxval=3.0)
  beta = jax.random.normal(jax.random.PRNGKey(3), (features,))
  q, scale = ik.grid(x, bits, per_token=True)
  out, out_scale = ik.i_layer_norm(q, gamma, beta, bits)
  ref = nonlinear.DEFAULT.layer_norm(q * scale, gamma, beta, 1e-12)
  # Within 0.5 % of each value's size (the outlier normalizes to ~20).
  assert float(jnp.max(jnp.abs(out * out_scale - ref) / (1 + jnp.abs(ref)))) < 0.005
  plan = ik.layer_norm_plan(bits, features)
  assert all(v >= 0 for v in plan.values())
  with pytest.raises(ValueError, match='no bits'):
    ik.layer_norm_plan(31, features)


def test_integer_products_equal_their_fake_quantized_twin():
  """Only the products converted: int8 x int8 -> int32 on the twin's grids is the twin's
  arithmetic up to float32 summation order."""
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  ids = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 1, 50)
  converted = integer_only.integer_only(FULL, prefix='')
  products_only = FULL.replace(products=converted.products)
  twin, _ = Encoder(FULL).apply({'params': params}, ids)
  integer, _ = Encoder(products_only).apply({'params': params}, ids)
  np.testing.assert_allclose(integer, twin, atol=2e-4)
  # Per-token activation grids too.
  token = CONFIG.replace(products=qat.qat_rules('w8,a8,token', attention=True))
  np.testing.assert_allclose(
      Encoder(token.replace(products=integer_only.integer_only(
          token.replace(hooks=FULL.hooks), prefix='').products)).apply(
              {'params': params}, ids)[0],
      Encoder(token).apply({'params': params}, ids)[0], atol=2e-4)


def test_integer_only_model_matches_its_fake_quant_twin():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  ids = jax.random.randint(jax.random.PRNGKey(1), (4, 16), 1, 50)
  mask = jnp.ones_like(ids).at[0, 10:].set(0).at[1, 4:].set(0)
  converted = integer_only.integer_only(FULL, prefix='')
  assert {spec for _, spec in converted.nonlinear} == {
      'integer:a8', 'integer:a8,token', f'integer:{integer_only.EMBEDDING_NORM_GRID}'}
  twin, _ = Encoder(FULL).apply({'params': params}, ids, mask)
  integer, _ = Encoder(converted).apply({'params': params}, ids, mask)
  real = np.asarray(mask, bool)
  twin, integer = np.asarray(twin)[real], np.asarray(integer)[real]
  cosine = (twin * integer).sum(-1) / np.linalg.norm(twin, axis=-1) / np.linalg.norm(
      integer, axis=-1)
  assert cosine.min() > 0.99
  assert np.abs(integer - twin).mean() < 0.1 * np.abs(twin).mean()
  # (Padded positions are not invisible to either: a per-tensor grid's scale is the
  # batch's largest value, padding included; the kernels give padded keys probability
  # 0, test_integer_softmax_sums_to_one_and_ignores_masked_keys.)


def test_conversion_names_what_is_not_fake_quantized():
  with pytest.raises(ValueError, match='no fake-quantized products'):
    integer_only.integer_only(CONFIG, prefix='')  # a float model: no products rules
  projections_only = CONFIG.replace(products=qat.qat_rules('w8,a8'))
  with pytest.raises(ValueError, match='not fake-quantized'):  # attention stays float
    integer_only.integer_only(projections_only, prefix='')
  no_hooks = CONFIG.replace(products=qat.qat_rules('w8,a8', attention=True))
  with pytest.raises(ValueError, match='softmax_in is not fake-quantized'):
    integer_only.integer_only(no_hooks, prefix='')
  wide = CONFIG.replace(products=qat.qat_rules('w8,a16', attention=True), hooks=FULL.hooks)
  with pytest.raises(ValueError, match='2..8 bits'):
    integer_only.integer_only(wide, prefix='')
  with pytest.raises(ValueError, match='symmetric grid'):
    nonlinear.NONLINEAR.make('integer:a8,asym')


def test_default_rules_leave_the_float_model_unchanged():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 1, 50)
  plain, _ = Encoder(CONFIG).apply({'params': params}, ids)
  named, _ = Encoder(CONFIG.replace(nonlinear=(('.*', 'default'),))).apply(
      {'params': params}, ids)
  np.testing.assert_array_equal(plain, named)
  with pytest.raises(ValueError, match='unknown non-linearity family'):
    Encoder(CONFIG.replace(nonlinear=(('.*', 'nope'),))).apply({'params': params}, ids)
