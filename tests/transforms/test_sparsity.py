"""Tests for research.transforms.sparsity: the schedule, masks under Adam + weight decay,
exact sparsity, the movement criterion, errors, reports, and a tiny trainer run."""
from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.testing import bert_like_params
from research.transforms import freeze
from research.transforms import sparsity as sp

H, F = 8, 12  # hidden, ffn


def tiny_params(seed=0):
  """A few BERT-shaped leaves (few leaves compile fast): sites of 64, 96, 96, 64 weights."""
  rng = np.random.default_rng(seed)
  arr = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {'encoder': {
      'embeddings': {'word_embeddings': {'embedding': arr(20, H)}},
      'layer_0': {'attention': {'query': {'kernel': arr(H, H), 'bias': arr(H)}},
                  'mlp': {'intermediate': {'kernel': arr(H, F)},
                          'output': {'kernel': arr(F, H)}}},
      'layer_1': {'attention': {'out': {'kernel': arr(H, H)}}}},
      'head': {'out': {'kernel': arr(H, 3)}}}


def site_leaves(params, sites=sp.DEFAULT_SITES):
  flags = jax.tree.leaves(sp.site_tree(params, sites))
  return [np.asarray(x) for x, s in zip(jax.tree.leaves(params), flags) if s]


def train(tx, params, steps, seed=0):
  """`max(steps)` updates with random gradients; returns {step: (params, opt_state)}."""
  state = tx.init(params)

  @jax.jit
  def step(p, s, key):
    grads = jax.tree.map(lambda x: jax.random.normal(key, x.shape), p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  snapshots = {}
  for i in range(1, max(steps) + 1):
    params, state = step(params, state, jax.random.PRNGKey(seed + i))
    if i in steps:
      snapshots[i] = params, state
  return snapshots


def test_polynomial_schedule_at_begin_middle_and_end():
  s = lambda t: float(sp.polynomial_sparsity(t, 0.1, 0.9, begin_step=100, end_step=300))
  assert s(0) == pytest.approx(0.1, abs=1e-7)     # before begin: initial
  assert s(100) == pytest.approx(0.1, abs=1e-7)   # begin
  assert s(200) == pytest.approx(0.9 - 0.8 * 0.5 ** 3, abs=1e-6)  # middle: cubic
  assert s(300) == pytest.approx(0.9, abs=1e-7)   # end
  assert s(1000) == pytest.approx(0.9, abs=1e-7)  # after end: final
  one_shot = sp.polynomial_schedule(0.0, 0.5, 5, 5)
  assert float(one_shot(4)) == 0.0 and float(one_shot(5)) == 0.5


def test_pruned_weights_stay_exactly_zero_under_adamw_with_weight_decay():
  params = tiny_params()
  schedule = sp.polynomial_schedule(0.0, 0.75, 2, 6)
  tx = sp.with_pruning(optax.adamw(0.05, weight_decay=0.5), schedule, begin_step=2,
                       end_step=6, frequency=2)
  runs = train(tx, params, (6, 12))  # 6 more steps with fixed masks, warm Adam moments
  (at_end, state), (later, _) = runs[6], runs[12]
  masks = [np.asarray(m) for m in jax.tree.leaves(state.masks)]
  for kernel, later_kernel, mask in zip(site_leaves(at_end), site_leaves(later), masks):
    assert np.all(kernel[~mask] == 0.0) and np.all(kernel[mask] != 0.0)
    assert np.all(later_kernel[~mask] == 0.0)  # exactly zero, still
  # Params outside the sites are trained, never pruned.
  assert np.all(np.asarray(later['encoder']['layer_0']['attention']['query']['bias']) != 0)
  assert np.all(np.asarray(later['encoder']['embeddings']['word_embeddings']['embedding']) != 0)
  assert np.all(np.asarray(later['head']['out']['kernel']) != 0)


@pytest.mark.parametrize('method, scope', [('magnitude', 'layer'), ('movement', 'global')])
def test_achieved_sparsity_is_the_target_within_one_weight(method, scope):
  params = tiny_params(seed=1)
  target = 0.3
  tx = sp.with_pruning(optax.adam(0.01), sp.polynomial_schedule(0.0, target, 1, 3),
                       begin_step=1, end_step=3, method=method, scope=scope)
  pruned, _ = train(tx, params, (4,))[4]
  kernels = site_leaves(pruned)
  zeros = [int(np.sum(k == 0)) for k in kernels]
  if scope == 'layer':
    for z, k in zip(zeros, kernels):
      assert abs(z - target * k.size) <= 1, (z, k.size)
  total = sum(k.size for k in kernels)
  assert abs(sum(zeros) - target * total) <= (1 if scope == 'global' else len(kernels))
  report = sp.sparsity_report(pruned)
  assert report['overall'] == pytest.approx(sum(zeros) / total, abs=1e-12)


def test_movement_prunes_weights_moving_towards_zero_not_the_smallest():
  # One site, 8 weights: the large ones are pushed towards zero, the small ones away.
  w = jnp.asarray([4.0, -4.0, 3.0, -3.0, 0.5, -0.5, 0.25, -0.25])
  params = {'kernel': w.reshape(2, 4), 'other': jnp.ones(3)}
  towards = jnp.asarray([1, 1, 1, 1, 0, 0, 0, 0], bool).reshape(2, 4)
  grads = {'kernel': jnp.where(towards, 1.0, -1.0) * jnp.sign(params['kernel']),
           'other': jnp.ones(3)}

  def pruned_after(method):
    tx = sp.with_pruning(optax.sgd(0.01), sp.polynomial_schedule(0.0, 0.5, 3, 3),
                         begin_step=3, end_step=3, sites='kernel', method=method)
    state, p = tx.init(params), params
    for _ in range(3):
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    return np.asarray(p['kernel']) == 0

  np.testing.assert_array_equal(pruned_after('movement'), np.asarray(towards))
  np.testing.assert_array_equal(pruned_after('magnitude'), ~np.asarray(towards))


def test_frozen_parameters_are_never_pruned():
  params = tiny_params()
  inner = sp.with_pruning(optax.adam(0.01), sp.polynomial_schedule(0.0, 0.5, 1, 2),
                          begin_step=1, end_step=2)
  tx = freeze.with_freezing(inner, params, freeze.freeze_bottom(1))
  pruned, _ = train(tx, params, (3,))[3]
  for got, want in zip(jax.tree.leaves(pruned['encoder']['layer_0']),
                       jax.tree.leaves(params['encoder']['layer_0'])):
    np.testing.assert_array_equal(got, want)
  assert np.mean(np.asarray(pruned['encoder']['layer_1']['attention']['out']['kernel']) == 0) \
      == pytest.approx(0.5, abs=1 / (H * H))
  # Sites that are all frozen: nothing left to prune is an error, not a silent no-op.
  frozen = freeze.with_freezing(inner, params, freeze.feature_extractor())
  with pytest.raises(ValueError, match='matches no'):
    frozen.init(params)


def test_bad_arguments_are_named():
  adam = optax.adam(0.01)
  schedule = sp.polynomial_schedule(0.0, 0.5, 1, 2)
  with pytest.raises(ValueError, match=r'final sparsity must be in \[0, 1\)'):
    sp.polynomial_schedule(0.0, 1.0, 1, 2)
  with pytest.raises(ValueError, match='begin after end'):
    sp.polynomial_schedule(0.0, 0.5, 5, 2)
  with pytest.raises(ValueError, match="unknown method 'random'"):
    sp.with_pruning(adam, schedule, begin_step=1, end_step=2, method='random')
  with pytest.raises(ValueError, match="unknown scope 'row'"):
    sp.with_pruning(adam, schedule, begin_step=1, end_step=2, scope='row')
  with pytest.raises(ValueError, match='frequency must be an int >= 1'):
    sp.with_pruning(adam, schedule, begin_step=1, end_step=2, frequency=0)
  tx = sp.with_pruning(adam, schedule, begin_step=1, end_step=2, sites='decoder/.*')
  with pytest.raises(ValueError, match=r"sites regex 'decoder/\.\*' matches no"):
    tx.init(tiny_params())
  config = dict(target=1.2, method='magnitude', begin=0.1, end=0.5, frequency=1, sites='')
  with pytest.raises(ValueError, match=r'target sparsity must be in \[0, 1\)'):
    sp.from_config(config, adam, 100)
  with pytest.raises(ValueError, match='begin <= end'):
    sp.from_config({**config, 'target': 0.5, 'begin': 0.6}, adam, 100)
  assert sp.from_config({**config, 'target': 0.0}, adam, 100) is adam  # off


def test_report_and_storage_bytes_of_a_half_pruned_kernel():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(64, 64)).astype(np.float32)
  kernel[rng.random(kernel.shape) < 0.5] = 0.0
  params = {'encoder': {'layer_0': {'mlp': {'output': {'kernel': kernel,
                                                       'bias': np.ones(64, np.float32)}}}}}
  report = sp.sparsity_report(params)
  assert report['encoder/layer_0/mlp/output/kernel'] == pytest.approx(
      np.mean(kernel == 0), abs=1e-12)
  assert set(report) == {'encoder/layer_0/mlp/output/kernel', 'overall'}
  sizes = sp.storage_bytes(params)
  assert sizes['dense'] == 64 * 64 * 4 + 64 * 4
  nnz = int(np.count_nonzero(kernel))
  assert sizes['csr'] == nnz * 8 + 65 * 4 + 64 * 4
  assert sizes['npz_compressed'] < 0.8 * sizes['dense']


# -- The trainer: config.sparsity ------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_run_config(tmp_path_factory):
  from research.checkpoints import export_pretrained  # pylint: disable=g-import-not-at-top
  from research.models import EncoderConfig, init_params  # pylint: disable=g-import-not-at-top
  from research.testing import write_synthetic_data  # pylint: disable=g-import-not-at-top
  from research.train.defaults import trainer_defaults  # pylint: disable=g-import-not-at-top
  encoder = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
                          intermediate_size=64, max_position_embeddings=64)
  folder = tmp_path_factory.mktemp('tiny_bert')
  export_pretrained(encoder, init_params(encoder, jax.random.PRNGKey(0)), folder,
                    tokenizer_from='minilm-l6')
  data = write_synthetic_data(tmp_path_factory.mktemp('data'))['root']
  c = trainer_defaults()
  c.model, c.data_dir = str(folder), f'{data}/glue'
  c.train_examples, c.eval_examples, c.batch_size, c.eval_batch_size = 64, 16, 16, 16
  c.max_length, c.pad_multiple, c.bucket_batches = 32, 32, 2
  c.num_epochs, c.total_steps, c.dropout = 0, 6, 0.0
  c.log_every, c.eval_every, c.checkpoint_every = 3, 6, 2
  c.optimizer.learning_rate = 1e-3
  c.sparsity.update(target=0.5, method='movement', begin=0.0, end=1.0, frequency=2)
  return c


def test_trainer_run_ends_sparse_and_resumes_bit_identically(tiny_run_config, tmp_path):
  from research.train import trainer  # pylint: disable=g-import-not-at-top
  result = trainer.train_and_evaluate(tiny_run_config, tmp_path)
  report = sp.sparsity_report(result['params'])
  kernels = site_leaves(result['params'])
  assert len(kernels) == 12  # 2 layers x (q, k, v, out, intermediate, output)
  for path, fraction in report.items():
    assert fraction == pytest.approx(0.5, abs=1 / (32 * 32)), path
  assert np.all(np.asarray(result['params']['head']['out']['kernel']) != 0)
  # Masks and scores are optimizer state: resuming from step 4 redoes 5 and 6 exactly.
  shutil.rmtree(tmp_path / 'checkpoints' / '6')
  resumed = trainer.train_and_evaluate(tiny_run_config, tmp_path)
  for a, b in zip(jax.tree.leaves(result['params']), jax.tree.leaves(resumed['params'])):
    np.testing.assert_array_equal(a, b)
  bad = tiny_run_config.copy_and_resolve_references()
  bad.ema_decay = 0.9
  with pytest.raises(ValueError, match='ema_decay'):
    trainer.train_and_evaluate(bad, tmp_path / 'ema')
