"""Tests for research.transforms.freeze on a hand-built BERT-shaped param tree."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.testing import bert_like_params
from research.transforms import freeze
from research.models.sizes import param_bytes

L, H, V, F = 2, 8, 40, 16  # layers, hidden, vocab, ffn


def tiny_params(num_layers=L, seed=0):
  return bert_like_params(num_layers, hidden=H, vocab=V, ffn=F, seed=seed)


def labels_by_path(params, rules):
  labels = freeze.freeze_labels(params, rules)
  return dict(zip(freeze.param_paths(params), jax.tree.leaves(labels)))


def size(tree):
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def test_feature_extractor_labels_and_counts():
  params = tiny_params()
  labels = labels_by_path(params, freeze.feature_extractor())
  for path, label in labels.items():
    assert label == ('freeze' if path.startswith('encoder/') else 'train'), path
  trainable, total = freeze.count_trainable(params, freeze.feature_extractor())
  assert total == size(params)
  assert trainable == size(params['head']) + size(params['layer_mix']) == 8 * 8 + 8 + 8 * 3 + 3 + 4
  assert freeze.count_trainable(params, freeze.full_finetune()) == (total, total)


def test_unmatched_parameters_are_an_error():
  params = tiny_params()
  with pytest.raises(ValueError, match=r'match no freeze rule.*head/dense/bias'):
    freeze.freeze_labels(params, [('encoder/.*', 'freeze'), ('layer_mix/.*', 'train')])
  # re.fullmatch: 'encoder' alone does not match 'encoder/...'.
  with pytest.raises(ValueError, match=r'\d+ parameter\(s\) match no freeze rule'):
    freeze.freeze_labels(params, [('encoder', 'freeze'), ('head/.*', 'train'),
                                  ('layer_mix/.*', 'train')])


def test_bad_rules_are_an_error():
  params = tiny_params()
  with pytest.raises(ValueError, match=r"label must be one of \('train', 'freeze'\)"):
    freeze.freeze_labels(params, [('.*', 'frozen')])
  with pytest.raises(ValueError, match='bad regex'):
    freeze.freeze_labels(params, [('encoder/(', 'freeze')])
  with pytest.raises(ValueError, match='must be a .regex, label. pair'):
    freeze.freeze_labels(params, ['.*'])


def test_first_match_wins():
  params = tiny_params()
  labels = labels_by_path(params, [('encoder/pooler/.*', 'train'),
                                   ('encoder/.*', 'freeze'), ('.*', 'train')])
  assert labels['encoder/pooler/kernel'] == 'train'
  assert labels['encoder/layer_0/attention/query/kernel'] == 'freeze'


def test_freeze_bottom_does_not_confuse_layer_1_and_layer_10():
  shapes = jax.eval_shape(lambda: tiny_params(num_layers=12))
  labels = labels_by_path(shapes, freeze.preset('bottom:2'))
  assert labels['encoder/embeddings/word_embeddings/embedding'] == 'freeze'
  assert labels['encoder/layer_0/mlp/output/kernel'] == 'freeze'
  assert labels['encoder/layer_1/mlp/output/kernel'] == 'freeze'
  assert labels['encoder/layer_2/mlp/output/kernel'] == 'train'
  assert labels['encoder/layer_10/mlp/output/kernel'] == 'train'
  assert labels['encoder/layer_11/attention/query/bias'] == 'train'
  emb_only = labels_by_path(shapes, freeze.freeze_bottom(0))
  assert emb_only['encoder/layer_0/mlp/output/kernel'] == 'train'
  assert freeze.frozen_embeddings() == [('encoder/embeddings/.*', 'freeze'), ('.*', 'train')]


def test_bitfit_trains_biases_head_and_mix_only():
  params = tiny_params()
  labels = labels_by_path(params, freeze.preset('bitfit'))
  for path, label in labels.items():
    trained = path.endswith('/bias') or not path.startswith('encoder/')
    assert label == ('train' if trained else 'freeze'), path
  assert labels['encoder/layer_1/output_norm/bias'] == 'train'
  assert labels['encoder/layer_1/output_norm/scale'] == 'freeze'


def test_preset_errors():
  assert freeze.preset('bottom:3') == freeze.freeze_bottom(3)
  with pytest.raises(ValueError, match=r"Unknown freeze preset 'linear_probe'.*bitfit.*bottom:<K>"):
    freeze.preset('linear_probe')
  with pytest.raises(ValueError, match="'two' is not an integer"):
    freeze.preset('bottom:two')
  with pytest.raises(ValueError, match='non-negative int, got -1'):
    freeze.freeze_bottom(-1)


def _run(tx, params, steps=3):
  state = tx.init(params)

  @jax.jit
  def step(params, state, key):
    grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for key in jax.random.split(jax.random.PRNGKey(1), steps):
    params, state = step(params, state, key)
  return params, state


def test_frozen_params_hold_no_adam_state_and_stay_bit_identical():
  params = tiny_params()
  rules = freeze.feature_extractor()
  trainable, total = freeze.count_trainable(params, rules)
  full_state = optax.adamw(1e-2).init(params)
  fe_state = freeze.with_freezing(optax.adamw(1e-2), params, rules).init(params)
  # AdamW: mu + nu in float32 per trained scalar, plus one int32 step count.
  assert param_bytes(full_state) == 8 * total + 4
  assert param_bytes(fe_state) == 8 * trainable + 4
  assert param_bytes(fe_state) * 10 < param_bytes(full_state)
  # eval_shape of the state gives the same count without allocating.
  shape_state = jax.eval_shape(freeze.with_freezing(optax.adamw(1e-2), params, rules).init, params)
  assert param_bytes(shape_state) == 8 * trainable + 4

  new, _ = _run(freeze.with_freezing(optax.adamw(1e-2, weight_decay=0.1), params, rules), params)
  old_enc, new_enc = jax.tree.leaves(params['encoder']), jax.tree.leaves(new['encoder'])
  assert all(np.array_equal(a, b) for a, b in zip(old_enc, new_enc))
  assert all(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(params['head']), jax.tree.leaves(new['head'])))


def test_all_frozen_is_a_no_op():
  params = tiny_params()
  tx = freeze.with_freezing(optax.adam(1.0), params, [('.*', 'freeze')])
  new, state = _run(tx, params, steps=2)
  assert param_bytes(state) == 4  # only Adam's step count
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new)))


def test_with_freezing_rejects_incomplete_rules_early():
  with pytest.raises(ValueError, match='match no freeze rule'):
    freeze.with_freezing(optax.sgd(0.1), tiny_params(), [('head/.*', 'train')])


def test_boxed_params_have_the_same_paths():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  params = tiny_params()
  boxed = jax.tree.map(lambda x: nn.Partitioned(x, (None,) * x.ndim), params)
  assert freeze.param_paths(boxed) == freeze.param_paths(params)
  assert freeze.count_trainable(boxed, freeze.bitfit()) == freeze.count_trainable(params, freeze.bitfit())
