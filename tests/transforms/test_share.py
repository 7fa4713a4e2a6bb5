"""Cross-layer sharing as a transform (research/transforms/share.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import Encoder, EncoderConfig, init_params
from research.transforms import share

CONFIG = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=4, num_heads=4,
                       intermediate_size=24, max_position_embeddings=32, hidden_dropout=0.0,
                       attention_dropout=0.0)


def count(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


@pytest.fixture
def params():
  return jax.tree.map(np.asarray, init_params(CONFIG, jax.random.PRNGKey(0)))


@pytest.fixture
def ids():
  return jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 7)), jnp.int32)


def test_all_shared_has_one_layer_and_equals_identical_layers(params, ids):
  same = {**params, **{f'layer_{i}': params['layer_0'] for i in range(4)}}
  config, shared = share.share(CONFIG, same)
  assert config.attention_map == config.ffn_map == (0, 0, 0, 0)
  assert sorted(k for k in shared if k.startswith('layer_')) == ['layer_0']
  layer = count(params['layer_0'])
  assert count(shared) == count(params) - 3 * layer
  np.testing.assert_allclose(Encoder(config).apply({'params': shared}, ids)[0],
                             Encoder(CONFIG).apply({'params': same}, ids)[0], atol=1e-5)


def test_shared_blocks_start_as_the_average_of_the_layers_they_merge(params, ids):
  config, shared = share.share(CONFIG, params, groups=2, parts='attention')
  assert config.attention_map == (0, 0, 1, 1) and config.ffn_map is None
  np.testing.assert_allclose(
      shared['layer_1']['attention']['query']['kernel'],
      (params['layer_2']['attention']['query']['kernel']
       + params['layer_3']['attention']['query']['kernel']) / 2, rtol=1e-6)
  assert set(shared['layer_3']) == {'mlp', 'output_norm'}  # its own FFN only
  attention = count(params['layer_0']['attention']) + count(params['layer_0']['attention_norm'])
  assert count(shared) == count(params) - 2 * attention
  # The shared model runs, and its own FFNs are untouched.
  out, _ = Encoder(config).apply({'params': shared}, ids)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(shared['layer_3']['mlp']['output']['kernel'],
                                params['layer_3']['mlp']['output']['kernel'])


def test_ffn_sharing_and_bad_arguments(params):
  config, shared = share.share(CONFIG, {'encoder': params, 'head': {}}, parts='ffn')
  assert config.ffn_map == (0, 0, 0, 0) and config.attention_map is None
  assert set(shared['encoder']['layer_2']) == {'attention', 'attention_norm'}
  with pytest.raises(ValueError, match='parts must be one of'):
    share.share(CONFIG, params, parts='norms')
  with pytest.raises(ValueError, match='groups must be in 1..4'):
    share.share(CONFIG, params, groups=5)
  with pytest.raises(ValueError, match='already shares'):
    share.share(config, shared['encoder'])
  uneven = CONFIG.replace(intermediate_size=(24, 24, 16, 16))
  with pytest.raises(ValueError, match='different sizes'):
    share.share(uneven, params)


def test_an_empty_selection_of_layers_is_an_error(params):
  with pytest.raises(ValueError, match=r'groups must be in 1..4 \(every group shares at least '
                                       r'one layer\), got 0'):
    share.share(CONFIG, params, groups=0)
  with pytest.raises(ValueError, match='groups must be an int in 1..4, got 2.0'):
    share.share(CONFIG, params, groups=2.0)
  with pytest.raises(ValueError, match="parts must be one of .*got ''"):
    share.share(CONFIG, params, parts='')
  # Params without the encoder's layers (another subtree, or a TaskModel's head alone).
  no_layers = {k: v for k, v in params.items() if not k.startswith('layer_')}
  with pytest.raises(ValueError, match=r"params lack \['layer_0', 'layer_1', 'layer_2'"):
    share.share(CONFIG, no_layers)
  with pytest.raises(ValueError, match=r"params lack \['layer_0'"):
    share.share(CONFIG, {'head': {}})
  # A layer without the part to share.
  partial = {**params, 'layer_2': {k: v for k, v in params['layer_2'].items() if k != 'mlp'}}
  with pytest.raises(ValueError, match=r"params lack \['layer_2/mlp'\]"):
    share.share(CONFIG, partial, parts='ffn')
  share.share(CONFIG, partial, parts='attention')  # its attention is all that is shared
