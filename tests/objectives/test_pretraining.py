"""Masked LM, NSP / SOP and their sum: tied head, losses against numpy, scores, round trips."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from research import objectives
from research.data.encoded import IGNORE_INDEX
from research.models.config import EncoderConfig
from research.models.heads import TaskModel
from research.objectives import MaskedLM, NextSentence, PreTraining, SentenceOrder

CONFIG = EncoderConfig(vocab_size=60, hidden_size=16, num_layers=2, num_heads=2,
                       intermediate_size=32, max_position_embeddings=32,
                       hidden_dropout=0.0, attention_dropout=0.0)


def _batch(seed=0, rows=3, length=10):
  rng = np.random.default_rng(seed)
  labels = np.full((rows, length), IGNORE_INDEX)
  pick = rng.random((rows, length)) < 0.3
  pick[:, 1] = True
  labels[pick] = rng.integers(5, 60, pick.sum())
  return {'input_ids': jnp.asarray(rng.integers(5, 60, (rows, length)), jnp.int32),
          'attention_mask': jnp.ones((rows, length), jnp.int32),
          'labels': jnp.asarray(labels, jnp.int32),
          'pair_labels': jnp.asarray(rng.integers(0, 2, rows), jnp.int32),
          'weights': jnp.asarray([1.0] * (rows - 1) + [0.0])}  # last row is padding


def _init(objective, batch):
  model = TaskModel(CONFIG, objective)
  params = model.init(jax.random.PRNGKey(0), batch['input_ids'], batch['attention_mask'])
  params = jax.tree.map(lambda x: np.asarray(x) + 0.05, nn.meta.unbox(params['params']))
  return model, params  # shifted: the output bias and LayerNorm bias are not zero


def test_masked_lm_head_is_tied_to_the_word_embeddings():
  batch = _batch()
  model, params = _init(MaskedLM(), batch)
  logits, inter = model.apply({'params': params}, batch['input_ids'], batch['attention_mask'])
  assert logits.shape == (3, 10, 60)
  head = params['head']
  assert set(head) == {'dense', 'layer_norm', 'bias'}
  # By hand: LayerNorm(gelu(h W + b)) E^T + bias (float32, tolerance 1e-4).
  h = np.asarray(inter['features'])
  x = h @ head['dense']['kernel'] + head['dense']['bias']
  x = x * 0.5 * (1 + jax.scipy.special.erf(x / np.sqrt(2)))
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
  x = x * head['layer_norm']['scale'] + head['layer_norm']['bias']
  table = params['encoder']['embeddings']['word_embeddings']['embedding']
  np.testing.assert_allclose(logits, x @ table.T + head['bias'], atol=1e-4, rtol=1e-4)
  # No separate decoder matrix: the vocabulary-sized params are the table and the bias.
  assert [np.shape(v) for v in jax.tree.leaves(head) if 60 in np.shape(v)] == [(60,)]


def test_masked_lm_loss_is_mean_over_masked_tokens_of_real_rows():
  batch = _batch(1)
  logits = jax.random.normal(jax.random.PRNGKey(1), (3, 10, 60))
  loss, count = MaskedLM().loss(logits, batch)
  labels = np.asarray(batch['labels'])
  valid = (labels != IGNORE_INDEX) & (np.asarray(batch['weights'])[:, None] > 0)
  lp = log_softmax(np.asarray(logits, np.float64), -1)
  expected = -np.take_along_axis(lp, np.maximum(labels, 0)[..., None], -1)[..., 0][valid].mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert int(count) == valid.sum() == int(MaskedLM().count(batch))


def test_masked_lm_scores_accuracy_loss_and_perplexity():
  batch = _batch(2)
  logits = jax.random.normal(jax.random.PRNGKey(2), (3, 10, 60))
  pred = MaskedLM().predict_batch(logits, batch)
  labels = np.asarray(batch['labels'])
  features = [{'labels': labels[i]} for i in range(2)]
  predictions = [{k: np.asarray(v)[i] for k, v in pred.items()} for i in range(2)]
  scores = MaskedLM().score(None, [], features, predictions)
  loss, _ = MaskedLM().loss(logits[:2], {k: v[:2] for k, v in batch.items()})
  np.testing.assert_allclose(scores['mlm_loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(scores['perplexity'], np.exp(loss), rtol=1e-5)
  valid = labels[:2] != IGNORE_INDEX
  acc = (np.asarray(logits[:2]).argmax(-1)[valid] == labels[:2][valid]).mean() * 100
  np.testing.assert_allclose(scores['mlm_accuracy'], acc, atol=1e-9)


@pytest.mark.parametrize('pair', ['nsp', 'sop'])
def test_pretraining_loss_is_mlm_plus_pair(pair):
  batch = _batch(3)
  model, params = _init(PreTraining(pair=pair), batch)
  outputs, _ = model.apply({'params': params}, batch['input_ids'], batch['attention_mask'])
  assert outputs['mlm'].shape == (3, 10, 60) and outputs['pair'].shape == (3, 2)
  loss, count = PreTraining(pair=pair).loss(outputs, batch)
  mlm, _ = MaskedLM().loss(outputs['mlm'], batch)
  single = (NextSentence if pair == 'nsp' else SentenceOrder)()
  pair_loss, rows = single.loss(outputs['pair'], batch)
  np.testing.assert_allclose(loss, mlm + pair_loss, rtol=1e-6)
  assert int(rows) == 2
  lp = log_softmax(np.asarray(outputs['pair'], np.float64), -1)[:2]
  np.testing.assert_allclose(pair_loss, -lp[[0, 1], np.asarray(batch['pair_labels'][:2])].mean(),
                             rtol=1e-5)
  pred = PreTraining(pair=pair).predict_batch(outputs, batch)
  features = [{'labels': np.asarray(batch['labels'][i]),
               'pair_labels': int(batch['pair_labels'][i])} for i in range(3)]
  scores = PreTraining(pair=pair).score(
      None, [], features, [{k: np.asarray(v)[i] for k, v in pred.items()} for i in range(3)])
  assert set(scores) == {'mlm_accuracy', 'mlm_loss', 'perplexity', f'{pair}_accuracy'}
  assert 0 <= scores[f'{pair}_accuracy'] <= 100


def test_pair_heads_need_a_pooler_and_known_settings():
  batch = _batch()
  no_pooler = CONFIG.replace(use_pooler=False)
  with pytest.raises(ValueError, match='pooler'):
    TaskModel(no_pooler, PreTraining(pair='nsp')).init(
        jax.random.PRNGKey(0), batch['input_ids'], batch['attention_mask'])
  TaskModel(no_pooler, PreTraining(pair='nsp', pooling='cls')).init(
      jax.random.PRNGKey(0), batch['input_ids'], batch['attention_mask'])
  with pytest.raises(ValueError, match='pair must be'):
    PreTraining(pair='xyz').check(CONFIG)
  with pytest.raises(ValueError, match='activation'):
    MaskedLM(transform_activation='swishy').check(CONFIG)


def test_round_trip_through_model_json():
  for objective in (MaskedLM(), PreTraining(pair='sop'), NextSentence(), SentenceOrder()):
    assert objectives.from_dict(objective.to_dict()) == objective



@pytest.mark.parametrize('objective', [MaskedLM(predict_share=0.3),
                                       PreTraining(pair='sop', predict_share=0.3)])
def test_logits_at_predicted_positions_give_the_full_loss_and_gradients(objective):
  from research.train.step import forward  # pylint: disable=g-import-not-at-top
  batch = _batch(rows=4, length=24)
  assert (np.asarray(batch['labels']) != IGNORE_INDEX).sum(1).max() <= 12  # all fit
  model, params = _init(objective, batch)
  full = model.clone(objective=objective.replace(predict_share=0.0))

  def loss(m, p, train):
    outputs, _ = forward(m, p, batch, train=train, rng=jax.random.PRNGKey(0))
    return m.objective.loss(outputs, batch)[0]

  # CONFIG has no dropout, so train=True differs only in where the logits are computed.
  gathered_outputs, _ = forward(model, params, batch, train=True, rng=jax.random.PRNGKey(0))
  mlm = gathered_outputs['mlm'] if isinstance(gathered_outputs, dict) else gathered_outputs
  assert mlm.shape[1] == 12 < 24  # ceil(0.3 * 24) + 4 positions, not 24
  np.testing.assert_allclose(loss(model, params, True), loss(full, params, True), rtol=1e-5)
  g_gathered = jax.grad(lambda p: loss(model, p, True))(params)
  g_full = jax.grad(lambda p: loss(full, p, True))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
               g_gathered, g_full)
  # Evaluation keeps logits at every position.
  eval_outputs, _ = forward(model, params, batch)
  eval_mlm = eval_outputs['mlm'] if isinstance(eval_outputs, dict) else eval_outputs
  assert eval_mlm.shape[1] == 24


def test_predicted_positions_put_labelled_tokens_first_in_order():
  from research.objectives.masked_lm import predicted_positions  # pylint: disable=g-import-not-at-top
  labels = np.full((2, 12), IGNORE_INDEX)
  labels[0, [2, 7, 9]] = 5
  labels[1, [0, 11]] = 7
  positions = np.asarray(predicted_positions(jnp.asarray(labels), 0.1))  # ceil(1.2) + 4 = 6
  assert positions.shape == (2, 6)
  np.testing.assert_array_equal(positions[0, :3], [2, 7, 9])
  np.testing.assert_array_equal(positions[1, :2], [0, 11])
  assert (labels[0, positions[0, 3:]] == IGNORE_INDEX).all()
  with pytest.raises(ValueError, match='predict_share'):
    MaskedLM(predict_share=1.5).check(CONFIG)
