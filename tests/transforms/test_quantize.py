"""Fake quantization (STE) and QAT through the product seam (research/transforms/quantize.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import Encoder, EncoderConfig, init_params, products
from research.transforms import quantize

CONFIG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0,
                       attention_dropout=0.0)


def test_symmetric_grid_error_and_straight_through_gradient():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
  for bits in (8, 4, 2):
    q = quantize.fake_quant(x, bits)
    step = float(jnp.abs(x).max()) / (2 ** (bits - 1) - 1)
    assert float(jnp.abs(q - x).max()) <= step / 2 + 1e-6  # round to nearest level
    assert len(np.unique(np.asarray(q))) <= 2 ** bits - 1
  grad = jax.grad(lambda v: (quantize.fake_quant(v, 4) * jnp.arange(8.0)).sum())(x)
  np.testing.assert_array_equal(grad, jnp.broadcast_to(jnp.arange(8.0), x.shape))


def test_per_channel_scales_and_asymmetric_grids():
  # Column 1 is 1000x larger: one scale per column keeps column 0 precise.
  x = jnp.stack([jnp.linspace(-1, 1, 11), 1000 * jnp.linspace(-1, 1, 11)], 1)
  per_tensor = quantize.fake_quant(x, 8)
  per_channel = quantize.fake_quant(x, 8, axes=(0,))
  assert float(jnp.abs(per_channel[:, 0] - x[:, 0]).max()) < 1e-2
  assert float(jnp.abs(per_tensor[:, 0] - x[:, 0]).max()) > 0.5  # all rounded to 0
  # Asymmetric: values in [10, 11] keep 255 levels where a symmetric grid keeps ~12.
  y = jnp.linspace(10.0, 11.0, 100)
  assert float(jnp.abs(quantize.fake_quant(y, 8, symmetric=False) - y).max()) < 0.5 / 255 + 1e-5
  assert float(jnp.abs(quantize.fake_quant(y, 8) - y).max()) > 0.02
  with pytest.raises(ValueError, match='bits must be in 2..16'):
    quantize.fake_quant(y, 1)


def test_qat_rules_quantize_projections_and_optionally_attention():
  ids = jnp.asarray(np.random.default_rng(1).integers(1, 50, (2, 9)), jnp.int32)
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  dense, _ = Encoder(CONFIG).apply({'params': params}, ids)
  outs = {}
  for spec in ('w8,a8', 'w2,a2', 'a8,token,asym'):
    config = CONFIG.replace(products=quantize.qat_rules(spec))
    with products.recording() as sites:
      outs[spec], _ = Encoder(config).apply({'params': params}, ids)
    used = dict(sites)
    assert used['layer_0/mlp/intermediate'] == f'fake_quant:{spec}'
    assert used['layer_0/attention/scores'] == 'default'
  cosine = lambda a, b: float(np.mean((np.asarray(a) * np.asarray(b)).sum(-1) / np.linalg.norm(
      a, axis=-1) / np.linalg.norm(b, axis=-1)))
  assert cosine(outs['w8,a8'], dense) > 0.999
  assert cosine(outs['w2,a2'], dense) < cosine(outs['w8,a8'], dense)
  config = CONFIG.replace(products=quantize.qat_rules('w8,a8', attention=True))
  with products.recording() as sites:
    Encoder(config).apply({'params': params}, ids)
  assert dict(sites)['layer_1/attention/context'] == 'fake_quant_act:w8,a8'
  with pytest.raises(ValueError, match="unknown part 'x8'"):
    quantize.qat_rules('w8,x8')
