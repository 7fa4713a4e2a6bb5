"""Truncated-SVD factorization of projections (research/transforms/low_rank.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research.models import Encoder, EncoderConfig, init_params
from research.transforms import low_rank

CONFIG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0,
                       attention_dropout=0.0)


def rank_r_params(r: int, seed: int = 0) -> dict:
  """Params whose FFN kernels have exactly rank r (so a rank-r factorization is exact)."""
  params = init_params(CONFIG, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params, sep='/')
  for i in range(2):
    for name, (m, n) in (('intermediate', (32, 64)), ('output', (64, 32))):
      flat[f'layer_{i}/mlp/{name}/kernel'] = jnp.asarray(
          rng.normal(size=(m, r)) @ rng.normal(size=(r, n)) * 0.02, jnp.float32)
  return traverse_util.unflatten_dict(flat, sep='/')


def count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def test_exact_low_rank_kernels_are_reproduced_with_fewer_parameters():
  params = rank_r_params(r=4)
  ids = jnp.asarray(np.random.default_rng(1).integers(1, 50, (2, 9)), jnp.int32)
  config, factored, reports = low_rank.factorize(CONFIG, params, rank=4,
                                                 sites=r'layer_\d+/mlp/.*')
  assert [r.site for r in reports] == ['layer_0/mlp/intermediate', 'layer_0/mlp/output',
                                       'layer_1/mlp/intermediate', 'layer_1/mlp/output']
  assert all(r.rank == 4 and r.kept_energy == pytest.approx(1.0) for r in reports)
  # Each 32 x 64 kernel (2,048 weights) becomes 4 x (32 + 64) = 384.
  assert count(params) - count(factored) == 4 * (2048 - 384)
  assert factored['layer_0']['mlp']['output']['a'].shape == (64, 4)
  want, _ = Encoder(CONFIG).apply({'params': params}, ids)
  got, _ = Encoder(config).apply({'params': factored}, ids)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The rebuilt model has exactly the factored shapes (a run written with this config
  # reloads them).
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, factored)


def test_energy_picks_the_rank_and_no_saving_stays_dense():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  flat = traverse_util.flatten_dict(params, sep='/')
  # Singular values 8, 4, 2, 1, 0, ...: 8^2 + 4^2 = 80 of 85 (94 %) in two.
  u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(32, 32)))
  v, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(64, 64)))
  s = np.zeros(32)
  s[:4] = [8, 4, 2, 1]
  flat['layer_0/mlp/intermediate/kernel'] = jnp.asarray((u * s) @ v[:32], jnp.float32)
  params = traverse_util.unflatten_dict(flat, sep='/')
  _, _, reports = low_rank.factorize(CONFIG, params, energy=0.9,
                                     sites='layer_0/mlp/intermediate')
  assert reports[0].rank == 2 and reports[0].kept_energy == pytest.approx(80 / 85)
  # Random (full-rank) attention kernels at energy 1.0 keep every singular value: no
  # saving, so nothing is factorized.
  config, same, reports = low_rank.factorize(CONFIG, params, energy=1.0,
                                             sites=r'layer_\d+/attention/.*')
  assert reports == [] and config == CONFIG
  assert count(same) == count(params)


def test_task_model_params_and_bad_arguments():
  params = {'encoder': rank_r_params(r=2), 'head': {'out': {'kernel': jnp.ones((32, 2)),
                                                              'bias': jnp.zeros(2)}}}
  config, factored, _ = low_rank.factorize(CONFIG, params, rank=2)
  assert 'a' in factored['encoder']['layer_1']['mlp']['intermediate']
  assert factored['head'] is params['head']
  assert config.projections[0] == (r'(.*/)?layer_0/attention/key', 'low_rank:2')
  with pytest.raises(ValueError, match='exactly one of rank or energy'):
    low_rank.factorize(CONFIG, params)
  with pytest.raises(ValueError, match='energy must be in'):
    low_rank.factorize(CONFIG, params, energy=1.5)


def test_factorized_embeddings_reproduce_low_rank_tables_with_fewer_parameters():
  """Tables of rank 8 (stacked) factorise exactly at E = 8: same outputs, fewer params."""
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  basis = rng.normal(size=(8, 32))
  flat = traverse_util.flatten_dict(params, sep='/')
  for name in ('word', 'position', 'token_type'):
    key = f'embeddings/{name}_embeddings/embedding'
    flat[key] = jnp.asarray(rng.normal(size=(flat[key].shape[0], 8)) @ basis * 0.02,
                            jnp.float32)
  params = traverse_util.unflatten_dict(flat, sep='/')
  config, small, kept = low_rank.factorize_embeddings(CONFIG, params, 8)
  assert config.embed_size == 8 and config.embedding_project_first
  assert kept == pytest.approx(1.0)
  assert small['embeddings']['word_embeddings']['embedding'].shape == (50, 8)
  assert count(small) < count(params)
  ids = jnp.asarray(rng.integers(0, 50, (2, 7)), jnp.int32)
  ref, _ = Encoder(CONFIG).apply({'params': params}, ids)
  out, _ = Encoder(config).apply({'params': small}, ids)
  np.testing.assert_allclose(out, ref, atol=1e-4)
  # A smaller E is an approximation; the ALBERT order (normalise first) is not the same
  # model, and it has no Hugging Face form in this order.
  config4, small4, kept4 = low_rank.factorize_embeddings(CONFIG, params, 4)
  assert kept4 < 1.0
  assert np.isfinite(np.asarray(Encoder(config4).apply({'params': small4}, ids)[0])).all()
  from research.checkpoints.hf_names import config_to_hf  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='factorised embedding'):
    config_to_hf(config)
  with pytest.raises(ValueError, match='already factorised'):
    low_rank.factorize_embeddings(config, small, 4)
  with pytest.raises(ValueError, match='size must be'):
    low_rank.factorize_embeddings(CONFIG, params, 32)


def test_rank_must_be_positive_and_within_each_kernels_rank():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  for rank in (0, -1):
    with pytest.raises(ValueError, match=f'rank must be >= 1, got {rank}'):
      low_rank.factorize(CONFIG, params, rank=rank)
  # Every projection of the tiny model has rank at most 32 (hidden size).
  with pytest.raises(ValueError, match=r'rank 33 is above the rank of layer_0/attention/key '
                                       r'\(kernel \(32, 4, 8\), 32 x 32: at most 32\)'):
    low_rank.factorize(CONFIG, params, rank=33)
  with pytest.raises(ValueError, match=r'rank 40 is above the rank of layer_0/mlp/intermediate'
                                       r' .*32 x 64: at most 32'):
    low_rank.factorize(CONFIG, params, rank=40, sites=r'layer_\d+/mlp/.*')
  # Rank 32 is allowed, but saves nothing: every kernel stays dense.
  config, _, reports = low_rank.factorize(CONFIG, params, rank=32)
  assert reports == [] and config == CONFIG


def test_sites_that_match_no_kernel_are_an_error():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="sites 'layer_5/.*' match no dense projection kernel"):
    low_rank.factorize(CONFIG, params, rank=4, sites=r'layer_5/.*')
  with pytest.raises(ValueError, match='match no dense projection kernel'):  # not a projection
    low_rank.factorize(CONFIG, params, rank=4, sites=r'embeddings/.*')
  # Factorized sites hold factors, not a kernel: doing it twice names that.
  config, factored, _ = low_rank.factorize(CONFIG, params, rank=4, sites=r'layer_\d+/mlp/.*')
  with pytest.raises(ValueError, match='a factorized one has no kernel'):
    low_rank.factorize(config, factored, rank=2, sites=r'layer_\d+/mlp/.*')
