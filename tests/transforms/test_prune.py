"""Structured pruning (research/transforms/prune.py, prune_iterative.py): importance,
selection, masks, physical removal, the iterative loop."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import EncoderConfig, Encoder
from research.models.heads import TaskModel
from research.objectives import Classification
from research.models.sizes import count_params
from research.transforms import low_rank, prune, prune_iterative

CONFIG = EncoderConfig(vocab_size=60, hidden_size=16, num_layers=2, num_heads=4,
                       intermediate_size=32, max_position_embeddings=32, hidden_dropout=0.0,
                       attention_dropout=0.0)
MODEL = TaskModel(CONFIG, Classification(num_labels=2, head_dropout=0.0))


def make_batch(seed: int, rows: int = 6, length: int = 10) -> dict:
  rng = np.random.default_rng(seed)
  mask = np.ones((rows, length), np.int32)
  mask[0, 7:] = 0  # one padded row: padding must not change the scores
  return {'input_ids': rng.integers(1, 60, (rows, length)).astype(np.int32),
          'attention_mask': mask, 'labels': rng.integers(0, 2, rows).astype(np.int32),
          'weights': np.ones(rows, np.float32)}


@pytest.fixture(scope='module')
def params():
  ids = jnp.ones((1, 8), jnp.int32)
  boxed = jax.jit(MODEL.init)(jax.random.PRNGKey(0), ids, ids)['params']
  return jax.tree.map(np.asarray, nn.meta.unbox(boxed))


def gated_loss(params, batch, head_gates, neuron_gates):
  """The loss with explicit gates: head h's out rows and neuron j's output row scaled."""
  encoder = dict(params['encoder'])
  for j in range(2):
    layer = dict(encoder[f'layer_{j}'])
    attention, mlp = dict(layer['attention']), dict(layer['mlp'])
    attention['out'] = {**attention['out'],
                        'kernel': attention['out']['kernel'] * head_gates[j][:, None, None]}
    mlp['output'] = {**mlp['output'], 'kernel': mlp['output']['kernel'] * neuron_gates[j][:, None]}
    encoder[f'layer_{j}'] = {**layer, 'attention': attention, 'mlp': mlp}
  outputs, _ = MODEL.apply({'params': {**params, 'encoder': encoder}}, batch['input_ids'],
                           batch['attention_mask'])
  return MODEL.objective.loss(outputs, batch)[0]


def test_importance_is_the_gate_gradient(params):
  batches = [make_batch(1), make_batch(2)]
  scores = prune.importance(MODEL, params, batches, normalize=False)
  assert scores.examples == 12
  ones = ([jnp.ones(4)] * 2, [jnp.ones(32)] * 2)
  want_h, want_n = np.zeros((2, 4)), np.zeros((2, 32))
  gate_grads = jax.jit(jax.grad(gated_loss, argnums=(2, 3)))
  for batch in batches:
    g_h, g_n = gate_grads(params, batch, *ones)
    want_h += np.abs(np.stack(g_h)) / 2  # the mean over batches of |per-batch gradient|
    want_n += np.abs(np.stack(g_n)) / 2
  for j in range(2):
    np.testing.assert_allclose(scores.heads[j], want_h[j], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(scores.neurons[j], want_n[j], rtol=1e-4, atol=1e-8)

  normed = prune.importance(MODEL, params, batches)
  for j in range(2):
    np.testing.assert_allclose(np.linalg.norm(normed.heads[j]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normed.neurons[j]), 1.0, rtol=1e-6)
  # A masked head no longer matters: its gate gradient is exactly 0.
  masked = prune.mask_heads(CONFIG, params, {1: [0, 1, 3]})
  assert prune.importance(MODEL, masked, batches[:1]).heads[1][2] == 0.0


def test_masked_model_equals_the_physically_pruned_one(params):
  ids = jnp.asarray(np.random.default_rng(3).integers(1, 60, (3, 9)), jnp.int32)
  mask = jnp.ones_like(ids).at[1, 6:].set(0)
  heads = {0: [], 1: [0, 2]}  # layer 0 loses every head; allowed
  neurons = {0: [1, 5, 30], 1: []}  # layer 1's FFN goes entirely
  masked = prune.mask_neurons(CONFIG, prune.mask_heads(CONFIG, params, heads), neurons)
  config, pruned = prune.remove(CONFIG, params, heads, neurons)
  assert config.num_heads == (0, 2) and config.intermediate_size == (3, 0)
  assert config.head_dim == CONFIG.head_dim == 4
  assert pruned['encoder']['layer_1']['attention']['query']['kernel'].shape == (16, 2, 4)
  assert set(pruned['encoder']['layer_1']['mlp']) == {'output_bias'}
  model = MODEL.clone(encoder=config)
  want, inter_w = MODEL.apply({'params': masked}, ids, mask)
  got, inter_g = model.apply({'params': pruned}, ids, mask)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(inter_g['hidden_states'][-1], inter_w['hidden_states'][-1],
                             atol=1e-5)
  # The pruned tree is exactly what the smaller config builds, and is smaller.
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, mask)['params'])
  assert (jax.tree.map(lambda x: x.shape, nn.meta.unbox(shapes))
          == jax.tree.map(lambda x: np.shape(x), pruned))
  # 6 heads (Q, K, V kernels and biases, out rows) and 29 + 32 neurons (in column,
  # bias, out row) go; layer 1's FFN keeps its output bias.
  removed = 6 * (3 * (16 * 4 + 4) + 4 * 16) + (29 + 32) * (16 + 1 + 16)
  assert count_params(params) - count_params(pruned) == removed
  # Encoder-only params work too, and removing nothing changes nothing.
  same_config, same = prune.remove(CONFIG, params['encoder'])
  assert same_config == CONFIG
  np.testing.assert_array_equal(Encoder(CONFIG).apply({'params': same}, ids)[0],
                                Encoder(CONFIG).apply({'params': params['encoder']}, ids)[0])


def test_selection_by_importance():
  scores = {0: np.array([0.5, 0.1, 0.9]), 1: np.array([0.2, 0.05, 0.7])}
  assert prune.lowest_removed(scores, 3) == {0: [0, 2], 1: [2]}
  assert prune.lowest_removed(scores, 0) == {0: [0, 1, 2], 1: [0, 1, 2]}
  assert prune.keep_top(scores, {0: 1, 1: 2}) == {0: [2], 1: [0, 2]}
  with pytest.raises(ValueError, match='width below 0'):
    prune.keep_top(scores, {0: -1})
  with pytest.raises(ValueError, match='cannot keep 4'):
    prune.keep_top(scores, {1: 4})
  with pytest.raises(ValueError, match='count must be in 0..6'):
    prune.lowest_removed(scores, 7)
  # With a minimum per layer, layer 0 keeps its best unit and layer 1's lowest goes.
  weak = {0: np.array([0.1, 0.2]), 1: np.array([0.9, 0.8])}
  assert prune.lowest_removed(weak, 2) == {0: [], 1: [0, 1]}
  assert prune.lowest_removed(weak, 2, min_per_layer=1) == {0: [1], 1: [0]}
  with pytest.raises(ValueError, match='count must be in 0..4'):
    prune.lowest_removed(scores, 5, min_per_layer=1)
  with pytest.raises(ValueError, match='sizes name layers'):
    prune.keep_top(scores, {3: 1})


def test_bad_requests_are_refused(params):
  with pytest.raises(ValueError, match='every attention head of every layer'):
    prune.remove(CONFIG, params, {0: [], 1: []})
  with pytest.raises(ValueError, match='head index 4 is out of range for layer 1'):
    prune.remove(CONFIG, params, {1: [0, 4]})
  with pytest.raises(ValueError, match='head index -1 is out of range'):
    prune.mask_heads(CONFIG, params, {0: [-1]})
  with pytest.raises(ValueError, match='name layer 2'):
    prune.remove(CONFIG, params, {2: [0]})
  with pytest.raises(ValueError, match='neuron index 32 is out of range'):
    prune.mask_neurons(CONFIG, params, {0: [32]})
  with pytest.raises(ValueError, match='repeat an index'):
    prune.remove(CONFIG, params, None, {0: [1, 1]})
  with pytest.raises(ValueError, match='intermediate_size must be >= 0'):
    CONFIG.replace(intermediate_size=(-1, 32))
  # A factorized FFN cannot be sliced: a clear refusal naming the site and kind.
  config, factored, _ = low_rank.factorize(CONFIG, params, rank=2, sites=r"layer_0/mlp/.*")
  with pytest.raises(ValueError, match=r"layer_0/mlp/intermediate is stored as 'low_rank:2'"):
    prune.remove(config, factored, None, {0: [0, 1]})
  with pytest.raises(ValueError, match='dense kernels only'):
    prune.importance(MODEL.clone(encoder=config), factored, [make_batch(0)])
  # Its attention is still dense: pruning heads only is fine.
  smaller, _ = prune.remove(config, factored, {0: [1]})
  assert smaller.num_heads == (1, 4)
  with pytest.raises(ValueError, match="TaskModel's params"):
    prune.importance(MODEL, params['encoder'], [make_batch(0)])


def test_iterative_pruning_stops_below_the_ratio(params):
  calls = []

  def evaluate(model, p):
    heads = sum(prune.set_heads(model.encoder).values())
    calls.append(heads)
    # A stand-in metric that falls with every head removed past 6 of 8.
    return 100.0 if heads >= 6 else 100.0 - 10 * (6 - heads)

  model, pruned, curve = prune_iterative.iterative_prune(
      MODEL, params, lambda: [make_batch(4)], evaluate, heads_step=0.2, neurons_step=0.1,
      min_ratio=0.95)
  assert calls == [8, 6, 5]
  assert [c['heads'] for c in curve] == [8, 6, 5]  # 20 % of those left, rounded, >= 1
  assert [c['accepted'] for c in curve] == [True, True, False]
  assert [c['neurons'] for c in curve] == [64, 58, 52]
  assert all(a['params'] > b['params'] for a, b in zip(curve, curve[1:]))
  # The result is the last accepted round's, physically pruned.
  assert sum(prune.set_heads(model.encoder).values()) == 6
  assert count_params(pruned) == curve[1]['params']
  batch = make_batch(0)
  out, _ = model.apply({'params': pruned}, batch['input_ids'], batch['attention_mask'])
  assert np.isfinite(np.asarray(out)).all()
  with pytest.raises(ValueError, match='min_ratio'):
    prune_iterative.iterative_prune(MODEL, params, lambda: [], evaluate, min_ratio=1.5)
  with pytest.raises(ValueError, match='nothing would be pruned'):
    prune_iterative.iterative_prune(MODEL, params, lambda: [], evaluate, heads_step=0.0)
