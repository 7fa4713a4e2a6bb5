"""LoRA as a projection kind (research/transforms/lora.py): identity at init, the update it
adds, merge on export (float32; atol 1e-4: adapted Q and V no longer run fused with K,
and the products' summation order changes the LayerNorm'd outputs by ~5e-5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import Encoder, EncoderConfig, init_params, projections
from research.transforms import lora

CONFIG = EncoderConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2,
                       intermediate_size=24, max_position_embeddings=32, hidden_dropout=0.0,
                       attention_dropout=0.0)
RULE = (lora.DEFAULT_TARGETS + '|.*/attention/out', 'lora:2:4')
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 7)), jnp.int32)


def lora_params(dense):
  """The dense params with fresh factors at every targeted site (as the trainer adds them)."""
  adapted = CONFIG.replace(projections=(RULE,))
  fresh = jax.tree.map(np.asarray, init_params(adapted, jax.random.PRNGKey(1)))
  for i in range(CONFIG.num_layers):
    for name in ('query', 'value', 'out'):
      site = fresh[f'layer_{i}']['attention'][name]
      site.update(dense[f'layer_{i}']['attention'][name])
  for i in range(CONFIG.num_layers):  # everything else is the dense model's
    for key in dense[f'layer_{i}']:
      if key != 'attention':
        fresh[f'layer_{i}'][key] = dense[f'layer_{i}'][key]
  fresh['embeddings'] = dense['embeddings']
  fresh['pooler'] = dense['pooler']
  return adapted, fresh


def test_fresh_adapters_reproduce_the_dense_model_and_factors_have_their_shapes():
  dense = jax.tree.map(np.asarray, init_params(CONFIG, jax.random.PRNGKey(0)))
  adapted, params = lora_params(dense)
  query = params['layer_0']['attention']['query']
  # [hidden, heads, head_dim] kernel: A [hidden, r], B [r, heads, head_dim].
  assert query['lora_a'].shape == (16, 2) and query['lora_b'].shape == (2, 2, 8)
  out = params['layer_1']['attention']['out']  # [heads, head_dim, hidden] kernel
  assert out['lora_a'].shape == (2, 8, 2) and out['lora_b'].shape == (2, 16)
  assert 'lora_a' not in params['layer_0']['attention']['key']
  want = Encoder(CONFIG).apply({'params': dense}, IDS)[0]
  got = Encoder(adapted).apply({'params': params}, IDS)[0]
  np.testing.assert_allclose(got, want, atol=1e-4)  # B = 0: the base model


def test_the_update_is_alpha_over_rank_times_a_b_and_merges_on_export():
  dense = jax.tree.map(np.asarray, init_params(CONFIG, jax.random.PRNGKey(0)))
  adapted, params = lora_params(dense)
  rng = np.random.default_rng(2)
  for i in range(CONFIG.num_layers):
    for name in ('query', 'value', 'out'):
      site = params[f'layer_{i}']['attention'][name]
      site['lora_b'] = rng.normal(0, 0.3, site['lora_b'].shape).astype(np.float32)
  got = Encoder(adapted).apply({'params': params}, IDS)[0]
  assert float(jnp.abs(got - Encoder(CONFIG).apply({'params': dense}, IDS)[0]).max()) > 1e-3
  # Merge on export: W + (alpha / r) A B as plain dense kernels gives the same outputs.
  merged = projections.densify(adapted.projections, params)
  q = params['layer_0']['attention']['query']
  expected = q['kernel'] + 2.0 * np.tensordot(q['lora_a'], q['lora_b'], axes=1)
  np.testing.assert_allclose(merged['layer_0']['attention']['query']['kernel'], expected,
                             atol=1e-6)
  assert 'lora_a' not in merged['layer_0']['attention']['query']
  plain = Encoder(CONFIG).apply({'params': merged}, IDS)[0]
  np.testing.assert_allclose(plain, got, atol=1e-4)


def test_kind_specs_and_technique_fields_are_checked():
  assert lora.parse_kind('8') == (8, 8.0) and lora.parse_kind('4:16') == (4, 16.0)
  with pytest.raises(ValueError, match='rank must be >= 1'):
    lora.parse_kind('0')
  with pytest.raises(ValueError, match='not a number'):
    lora.parse_kind('4:big')
  with pytest.raises(ValueError, match='exceeds'):
    init_params(CONFIG.replace(projections=(('.*/query', 'lora:99'),)), jax.random.PRNGKey(0))
  from research.train.defaults import trainer_defaults  # pylint: disable=g-import-not-at-top
  config = trainer_defaults()
  assert not lora.TECHNIQUE.active(config)
  config.lora.rank = -1
  with pytest.raises(ValueError, match='config.lora.rank'):
    lora.TECHNIQUE.check(config)
  config.lora.rank, config.lora.targets = 4, '(query'
  with pytest.raises(ValueError, match='config.lora.targets'):
    lora.TECHNIQUE.check(config)
  config.lora.targets = lora.DEFAULT_TARGETS
  rules = lora.TECHNIQUE.freeze_rules(config, [('.*', 'train')])
  assert rules[:2] == [(lora.FACTORS, 'train'), ('encoder/.*', 'freeze')]
  config.freeze = 'bitfit'  # another preset decides the rest of the encoder
  assert lora.TECHNIQUE.freeze_rules(config, [('x', 'train')]) == [(lora.FACTORS, 'train'),
                                                                    ('x', 'train')]
