"""Width reduction by index and by importance (research/transforms/narrow.py): keeping
everything changes nothing, dropping heads / units equals masking them, the ranking keeps
the units that matter, bad input is named, and the leading order is truncate_width."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import EncoderConfig
from research.models.heads import TaskModel
from research.objectives import Classification
from research.transforms import narrow, prune, student_init

CONFIG = EncoderConfig(vocab_size=60, hidden_size=16, num_layers=2, num_heads=4,
                       intermediate_size=32, max_position_embeddings=32, hidden_dropout=0.0,
                       attention_dropout=0.0)
MODEL = TaskModel(CONFIG, Classification(num_labels=2, head_hidden=8, head_dropout=0.0))


def make_batch(seed: int, rows: int = 6, length: int = 10) -> dict:
  rng = np.random.default_rng(seed)
  mask = np.ones((rows, length), np.int32)
  mask[0, 7:] = 0
  return {'input_ids': rng.integers(1, 60, (rows, length)).astype(np.int32),
          'attention_mask': mask, 'labels': rng.integers(0, 2, rows).astype(np.int32)}


BATCHES = [make_batch(1), make_batch(2)]


@pytest.fixture(scope='module')
def params():
  ids = jnp.ones((1, 8), jnp.int32)
  boxed = jax.jit(MODEL.init)(jax.random.PRNGKey(0), ids, ids)['params']
  return jax.tree.map(np.asarray, nn.meta.unbox(boxed))


def logits(config, params, batch=BATCHES[0]):
  return np.asarray(MODEL.clone(encoder=config).apply(
      {'params': params}, batch['input_ids'], batch['attention_mask'])[0])


def test_keeping_everything_is_the_teacher(params):
  config, same = narrow.ranked_width(MODEL, params, BATCHES, num_heads=4,
                                     intermediate_size=32, hidden_size=16)
  assert config == CONFIG
  np.testing.assert_allclose(logits(config, same), logits(CONFIG, params), atol=1e-5)
  # Indices in any order name the same model (kept in increasing order).
  config, same = narrow.narrow(CONFIG, params, heads={0: [3, 2, 1, 0]},
                               coordinates=list(reversed(range(16))))
  np.testing.assert_allclose(logits(config, same), logits(CONFIG, params), atol=1e-5)


def test_dropping_heads_and_units_equals_masking_them(params):
  heads, units = {0: [1, 3], 1: [0]}, {0: [0, 5, 7], 1: [2, 3, 30, 31]}
  config, small = narrow.narrow(CONFIG, params, heads=heads, units=units)
  assert (config.num_heads, config.intermediate_size) == ((2, 1), (3, 4))
  assert small['encoder']['layer_1']['attention']['query']['kernel'].shape == (16, 1, 4)
  masked = prune.mask_neurons(CONFIG, prune.mask_heads(CONFIG, params, heads), units)
  for batch in BATCHES:
    np.testing.assert_allclose(logits(config, small, batch), logits(CONFIG, masked, batch),
                               atol=1e-5)


def test_coordinates_are_gathered_everywhere(params):
  keep = [0, 3, 8, 15]
  config, small = narrow.narrow(CONFIG, params, coordinates=keep)
  encoder, source = small['encoder'], params['encoder']
  assert config.hidden_size == 4 and config.head_dim == 4
  np.testing.assert_array_equal(encoder['embeddings']['word_embeddings']['embedding'],
                                source['embeddings']['word_embeddings']['embedding'][:, keep])
  np.testing.assert_array_equal(encoder['layer_1']['attention']['out']['kernel'],
                                source['layer_1']['attention']['out']['kernel'][..., keep])
  np.testing.assert_array_equal(encoder['layer_0']['mlp']['intermediate']['kernel'],
                                source['layer_0']['mlp']['intermediate']['kernel'][keep])
  np.testing.assert_array_equal(encoder['pooler']['kernel'],
                                source['pooler']['kernel'][np.ix_(keep, keep)])
  np.testing.assert_array_equal(small['head']['dense']['kernel'],
                                params['head']['dense']['kernel'][keep])
  assert np.isfinite(logits(config, small)).all()


def _with_zeroed(params, edit):
  out = jax.tree.map(np.copy, params)
  edit(out['encoder'])
  return out


def test_the_ranking_keeps_what_matters(params):
  # Only head 2 (layer 0) / head 1 (layer 1) and FFN unit 5 write anything: the rest
  # have zero output rows, so their gates have zero gradient and removing them is exact.
  def silence(encoder):
    for j, head in ((0, 2), (1, 1)):
      out = encoder[f'layer_{j}']['attention']['out']['kernel']
      out[[h for h in range(4) if h != head]] = 0.0
      encoder[f'layer_{j}']['mlp']['output']['kernel'][[u for u in range(32) if u != 5]] = 0.0
  sparse = _with_zeroed(params, silence)
  config, small = narrow.ranked_width(MODEL, sparse, BATCHES, num_heads=1, intermediate_size=1)
  found = narrow.scores(MODEL, sparse, BATCHES, coordinates=False)
  assert narrow.top(found, num_heads=1, intermediate_size=1)['heads'] == {0: [2], 1: [1]}
  assert narrow.top(found, intermediate_size=1)['units'] == {0: [5], 1: [5]}
  assert (config.num_heads, config.intermediate_size) == (1, 1)
  np.testing.assert_allclose(logits(config, small), logits(CONFIG, sparse), atol=1e-5)
  # Coordinates 3 and 11 are the only ones any LayerNorm lets through.
  def only(encoder):
    for norm in [encoder['embeddings']['layer_norm']] + [
        encoder[f'layer_{j}'][n] for j in range(2) for n in ('attention_norm', 'output_norm')]:
      for leaf in ('scale', 'bias'):
        norm[leaf][[c for c in range(16) if c not in (3, 11)]] = 0.0
      norm['bias'][[3, 11]] = 0.5
  narrowed = _with_zeroed(params, only)
  values = narrow.coordinate_importance(MODEL, narrowed, BATCHES)
  assert values[[3, 11]].min() > 0 and np.count_nonzero(values) == 2
  config, small = narrow.ranked_width(MODEL, narrowed, BATCHES, hidden_size=2)
  np.testing.assert_array_equal(small['encoder']['layer_0']['output_norm']['scale'],
                                narrowed['encoder']['layer_0']['output_norm']['scale'][[3, 11]])


def test_coordinate_importance_is_the_gate_gradient(params):
  # An explicit gate on every LayerNorm output: LN(x) * xi = scale * xi, bias * xi.
  def gated_loss(xi, batch):
    encoder = jax.tree.map(lambda x: x, params['encoder'])
    norms = [('embeddings', 'layer_norm')] + [(f'layer_{j}', n) for j in range(2)
                                              for n in ('attention_norm', 'output_norm')]
    for a, b in norms:
      encoder[a] = {**encoder[a], b: {k: v * xi for k, v in encoder[a][b].items()}}
    outputs, _ = MODEL.apply({'params': {**params, 'encoder': encoder}}, batch['input_ids'],
                             batch['attention_mask'])
    return MODEL.objective.loss(outputs, batch)[0]
  grad = jax.jit(jax.grad(gated_loss))
  want = np.mean([np.abs(grad(jnp.ones(16), b)) for b in BATCHES], axis=0)  # equal rows
  np.testing.assert_allclose(narrow.coordinate_importance(MODEL, params, BATCHES), want,
                             rtol=1e-4, atol=1e-7)


def test_another_loss_can_be_scored(params):
  # A distillation-style loss reading targets the caller put in the batch.
  def to_targets(outputs, batch):
    return jnp.mean((outputs - batch['targets']) ** 2), jnp.asarray(outputs.shape[0], jnp.float32)
  batches = [{**b, 'targets': np.zeros((6, 2), np.float32)} for b in BATCHES]
  found = narrow.scores(MODEL, params, batches, loss=to_targets)
  task = narrow.scores(MODEL, params, batches)
  assert not np.allclose(found.coordinates, task.coordinates)
  assert found.heads[0].shape == (4,) and found.units[1].shape == (32,)


def test_bad_input_is_named(params):
  with pytest.raises(ValueError, match='head index 4 is out of range for layer 0'):
    narrow.narrow(CONFIG, params, heads={0: [0, 4]})
  with pytest.raises(ValueError, match=r'neurons to keep in layer 1 repeat an index'):
    narrow.narrow(CONFIG, params, units={1: [2, 2]})
  with pytest.raises(ValueError, match='name layer 5'):
    narrow.narrow(CONFIG, params, heads={5: [0]})
  with pytest.raises(ValueError, match='coordinate 16 is out of range; the hidden size is 16'):
    narrow.narrow(CONFIG, params, coordinates=[0, 16])
  with pytest.raises(ValueError, match='coordinates repeat an index'):
    narrow.narrow(CONFIG, params, coordinates=[1, 1])
  with pytest.raises(ValueError, match='keeps no hidden coordinate'):
    narrow.narrow(CONFIG, params, coordinates=[])
  with pytest.raises(ValueError, match=r'ranked_width: num_heads=5 must be in 1..4'):
    narrow.ranked_width(MODEL, params, BATCHES, num_heads=5)
  with pytest.raises(ValueError, match=r'hidden_size=17 must be in 1..16'):
    narrow.ranked_width(MODEL, params, BATCHES, hidden_size=17)
  with pytest.raises(ValueError, match=r'intermediate_size=0 must be in 1..32'):
    narrow.ranked_width(MODEL, params, BATCHES, intermediate_size=0)
  # Layers of different widths: every layer must be able to keep the count asked.
  config, uneven = narrow.narrow(CONFIG, params, heads={1: [0, 1]})
  with pytest.raises(ValueError, match=r'num_heads=3 must be in 1..2 \(the model has '
                                       r'num_heads \[2, 4\]\)'):
    narrow.ranked_width(MODEL.clone(encoder=config), uneven, BATCHES, num_heads=3)
  with pytest.raises(ValueError, match="TaskModel's params"):
    narrow.coordinate_importance(MODEL, params['encoder'], BATCHES)
  with pytest.raises(ValueError, match='no .weighted. examples'):
    narrow.ranked_width(MODEL, params, [], hidden_size=8)
  with pytest.raises(ValueError, match='sharing'):
    narrow.narrow(CONFIG.shared(1), params, coordinates=[0])
  with pytest.raises(ValueError, match='needs scores the WidthScores lack'):
    narrow.top(narrow.WidthScores(None, None, np.ones(16)), num_heads=2)


def test_leading_order_is_truncate_width(params):
  want_config, want = student_init.truncate_width(CONFIG, params, num_heads=3,
                                                  intermediate_size=20, hidden_size=8)
  config, got = narrow.narrow(CONFIG, params, **narrow.leading(
      CONFIG, num_heads=3, intermediate_size=20, hidden_size=8))
  assert config == want_config == CONFIG.replace(num_heads=3, intermediate_size=20,
                                                 hidden_size=8)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # The leading slices, literally.
  layer = got['encoder']['layer_1']
  np.testing.assert_array_equal(layer['attention']['query']['kernel'],
                                params['encoder']['layer_1']['attention']['query']['kernel'][:8, :3])
  np.testing.assert_array_equal(layer['mlp']['output']['kernel'],
                                params['encoder']['layer_1']['mlp']['output']['kernel'][:20, :8])
  # Equal scores rank like the leading order.
  flat = narrow.WidthScores({0: np.ones(4), 1: np.ones(4)}, None, np.ones(16))
  assert narrow.top(flat, num_heads=2, hidden_size=3) == {
      'heads': {0: [0, 1], 1: [0, 1]}, 'units': None, 'coordinates': [0, 1, 2]}


def test_factorised_embeddings_narrow_the_projection():
  config = CONFIG.replace(embedding_size=8)
  params = jax.tree.map(np.asarray, nn.meta.unbox(TaskModel(config, Classification(
      num_labels=2)).init(jax.random.PRNGKey(1), jnp.ones((1, 8), jnp.int32),
                          jnp.ones((1, 8), jnp.int32))['params']))
  model = TaskModel(config, Classification(num_labels=2, head_dropout=0.0))
  new, small = narrow.ranked_width(model, params, BATCHES, hidden_size=12)
  embeddings = small['encoder']['embeddings']
  assert (new.hidden_size, new.embedding_size) == (12, 8)
  assert embeddings['word_embeddings']['embedding'].shape == (60, 8)
  assert embeddings['projection']['kernel'].shape == (8, 12)
  out, _ = model.clone(encoder=new).apply({'params': small}, BATCHES[0]['input_ids'],
                                          BATCHES[0]['attention_mask'])
  assert np.isfinite(np.asarray(out)).all()
