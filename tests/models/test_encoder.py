"""The encoder's structure: per-layer sizes, sharing, factorised embedding, dtypes, axes."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research.models import Encoder, EncoderConfig, init_params, mean_pool
from research.models.encoder import Layer

TINY = dict(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24,
            max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)


def apply(config, params, ids, mask=None, **kwargs):
  return Encoder(config).apply({'params': params}, ids, mask, **kwargs)


@pytest.fixture
def ids():
  return jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 7)), jnp.int32)


def test_outputs_and_intermediates(ids):
  config = EncoderConfig(**TINY)
  params = init_params(config, jax.random.PRNGKey(0))
  mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
  out, inter = apply(config, params, ids, mask, output_attentions=True)
  assert out.shape == (2, 7, 16)
  assert len(inter['hidden_states']) == 3
  np.testing.assert_array_equal(inter['hidden_states'][-1], out)
  probs = np.asarray(inter['attentions'][0])
  assert probs.shape == (2, 4, 7, 7)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  assert probs[1, :, :, 4:].max() < 1e-12  # padding keys get no attention
  assert inter['pooled'].shape == (2, 16)


def test_padding_does_not_change_real_tokens(ids):
  config = EncoderConfig(**TINY)
  params = init_params(config, jax.random.PRNGKey(0))
  short, _ = apply(config, params, ids[:1, :4])
  padded, _ = apply(config, params, ids[:1].at[:, 4:].set(0), jnp.array([[1] * 4 + [0] * 3]))
  np.testing.assert_allclose(short, padded[:, :4], atol=1e-5)


def test_pruned_head_equals_zeroed_head(ids):
  """A layer with 3 heads equals the 4-head layer whose 4th head's output is zeroed."""
  full = EncoderConfig(**TINY)
  params = init_params(full, jax.random.PRNGKey(1))
  flat = traverse_util.flatten_dict(params, sep='/')
  zeroed = dict(flat)
  zeroed['layer_0/attention/out/kernel'] = flat['layer_0/attention/out/kernel'].at[3].set(0)
  pruned = dict(flat)
  for name in ('query', 'key', 'value'):
    pruned[f'layer_0/attention/{name}/kernel'] = flat[f'layer_0/attention/{name}/kernel'][:, :3]
    pruned[f'layer_0/attention/{name}/bias'] = flat[f'layer_0/attention/{name}/bias'][:3]
  pruned['layer_0/attention/out/kernel'] = flat['layer_0/attention/out/kernel'][:3]
  small = full.replace(num_heads=(3, 4))
  a, _ = apply(full, traverse_util.unflatten_dict(zeroed, sep='/'), ids)
  b, _ = apply(small, traverse_util.unflatten_dict(pruned, sep='/'), ids)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_per_layer_sizes_and_fully_pruned_blocks(ids):
  config = EncoderConfig(**{**TINY, 'num_layers': 3, 'num_heads': (2, 0, 4),
                            'head_dim': 4, 'intermediate_size': (8, 0, 24)})
  params = init_params(config, jax.random.PRNGKey(0))
  assert params['layer_0']['attention']['query']['kernel'].shape == (16, 2, 4)
  assert params['layer_1']['attention']['query']['kernel'].shape == (16, 0, 4)
  assert params['layer_0']['mlp']['intermediate']['kernel'].shape == (16, 8)
  assert 'intermediate' not in params['layer_1']['mlp']
  out, _ = apply(config, params, ids)
  assert out.shape == (2, 7, 16) and np.isfinite(np.asarray(out)).all()
  # Intermediates for distillation: a layer without heads has no attention or q/k/v.
  _, inter = apply(config, params, ids, output_attentions=True, output_qkv=True)
  assert inter['attentions'][1] is None and inter['queries'][1] is None
  assert inter['values'][2].shape == (2, 4, 7, 4)


def test_shared_layers_and_factorised_embedding(ids):
  config = EncoderConfig(**{**TINY, 'num_layers': 3, 'embedding_size': 8,
                            'model_type': 'albert'}).shared()
  params = init_params(config, jax.random.PRNGKey(0))
  assert set(params) == {'embeddings', 'layer_0', 'pooler'}
  assert params['embeddings']['word_embeddings']['embedding'].shape == (50, 8)
  assert params['embeddings']['projection']['kernel'].shape == (8, 16)
  _, inter = apply(config, params, ids)
  assert len(inter['hidden_states']) == 4
  # Applying the one shared layer three times by hand gives the same result.
  layer = nn.apply(lambda m, x: m(x, jnp.zeros((1, 1, 1, 7)), True, False)[0],
                   Layer(config, 4, 24))
  x = inter['hidden_states'][0]
  for _ in range(3):
    x = layer({'params': params['layer_0']}, x)
  np.testing.assert_allclose(x, inter['hidden_states'][-1], atol=1e-5)


def test_bfloat16_compute_close_to_float32(ids):
  config = EncoderConfig(**TINY)
  params = init_params(config, jax.random.PRNGKey(0))
  out32, _ = apply(config, params, ids)
  out16, _ = apply(config.replace(dtype='bfloat16'), params, ids)
  assert out16.dtype == jnp.bfloat16
  a, b = np.asarray(out32), np.asarray(out16.astype(jnp.float32))
  cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  assert cosine.min() > 0.99, cosine.min()


def test_dropout_only_when_not_deterministic(ids):
  config = EncoderConfig(**{**TINY, 'hidden_dropout': 0.5})
  params = init_params(config, jax.random.PRNGKey(0))
  a, _ = apply(config, params, ids)
  b, _ = apply(config, params, ids)
  c, _ = apply(config, params, ids, deterministic=False, rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_params_carry_logical_axis_names():
  config = EncoderConfig(**TINY)
  boxed = Encoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed)['params'], sep='/')
  assert tuple(specs['layer_0/attention/query/kernel']) == ('embed', 'heads', 'kv')
  assert tuple(specs['layer_0/mlp/intermediate/kernel']) == ('embed', 'mlp')
  assert tuple(specs['embeddings/word_embeddings/embedding']) == ('vocab', 'embed')


def test_relu_and_tanh_gelu_change_the_output(ids):
  base = EncoderConfig(**TINY)
  params = init_params(base, jax.random.PRNGKey(0))
  outs = [np.asarray(apply(base.replace(hidden_act=a), params, ids)[0])
          for a in ('gelu', 'gelu_tanh', 'relu')]
  assert 0 < np.abs(outs[0] - outs[1]).max() < 1e-2  # tanh approximation is close
  assert np.abs(outs[0] - outs[2]).max() > 1e-2


def test_mean_pool_ignores_padding():
  hidden = jnp.arange(12, dtype=jnp.float32).reshape(1, 3, 4)
  pooled = mean_pool(hidden, jnp.array([[1, 1, 0]]))
  np.testing.assert_allclose(pooled, [[2, 3, 4, 5]])


@pytest.mark.parametrize('changes, message', [
    (dict(num_heads=(4, 4, 4)), 'num_heads has 3 entries'),
    (dict(hidden_act='swish'), 'hidden_act'),
    (dict(hidden_size=18), 'not divisible'),
    (dict(intermediate_size=-1), 'intermediate_size must be >= 0'),
    (dict(dtype='float8'), 'dtype'),
    (dict(hidden_dropout=1.5), 'hidden_dropout'),
])
def test_invalid_config_values_are_named(changes, message):
  with pytest.raises(ValueError, match=message):
    EncoderConfig(**{**TINY, **changes})


def test_sequence_longer_than_position_table_is_an_error():
  config = EncoderConfig(**TINY)
  params = init_params(config, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='exceeds the position table'):
    apply(config, params, jnp.ones((1, 33), jnp.int32))
