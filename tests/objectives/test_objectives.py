"""Objectives: losses (the tagging token weighting above all), predictions, round trips."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import objectives
from research.data import tasks
from research.objectives import Classification, Regression, Span, Tagging


def tagging_batch(lengths, seed=0):
  """Rows with the given numbers of labelled tokens (the rest IGNORE_INDEX), length 8."""
  rng = np.random.default_rng(seed)
  labels = np.full((len(lengths), 8), -100)
  for row, n in enumerate(lengths):
    labels[row, :n] = rng.integers(0, 3, n)
  return {'input_ids': jnp.ones((len(lengths), 8), jnp.int32), 'labels': jnp.asarray(labels),
          'weights': jnp.ones(len(lengths))}


def token_weights(objective, batch):
  """d loss / d (per-token cross-entropy): each labelled token's weight in the loss."""
  logits = jnp.zeros(batch['labels'].shape + (3,))
  grads = jax.grad(lambda z: objective.loss(z, batch)[0])(logits)
  # For uniform logits the gradient wrt the true class logit is -(2/3) * weight.
  labels = np.asarray(batch['labels'])
  picked = np.take_along_axis(np.asarray(grads), np.maximum(labels, 0)[..., None], -1)[..., 0]
  return np.where(labels >= 0, -1.5 * picked, 0.0)


def test_fixed_token_loss_weighs_every_token_the_same_in_short_and_long_batches():
  short, long = tagging_batch([1, 2, 1, 2]), tagging_batch([8, 7, 8, 6])  # 6 vs 29 tokens
  per_batch = Tagging(num_labels=3)
  w_short, w_long = token_weights(per_batch, short), token_weights(per_batch, long)
  # Per-batch means: a token of the short batch weighs 29 / 6 times one of the long batch.
  np.testing.assert_allclose(w_short.max() / w_long.max(), 29 / 6, rtol=1e-5)
  features = [{'labels': np.asarray(row)} for row in np.concatenate(
      [np.asarray(short['labels']), np.asarray(long['labels'])])]
  fixed = Tagging(num_labels=3, token_loss='fixed').with_train_statistics(features)
  assert fixed.tokens_per_example == pytest.approx(35 / 8)
  w_short, w_long = token_weights(fixed, short), token_weights(fixed, long)
  expected = 1 / (4 * 35 / 8)  # rows times the train set's mean labelled tokens
  np.testing.assert_allclose(w_short[w_short > 0], expected, rtol=1e-5)
  np.testing.assert_allclose(w_long[w_long > 0], expected, rtol=1e-5)
  # Padding rows count neither as tokens nor as rows.
  padded = {**long, 'weights': jnp.array([1.0, 1.0, 0.0, 0.0])}
  np.testing.assert_allclose(token_weights(fixed, padded)[:2][np.asarray(long['labels'])[:2] >= 0],
                             1 / (2 * 35 / 8), rtol=1e-5)
  assert token_weights(fixed, padded)[2:].max() == 0.0
  with pytest.raises(ValueError, match='tokens_per_example'):
    Tagging(num_labels=3, token_loss='fixed').check(None)
  with pytest.raises(ValueError, match='token_loss'):
    Tagging(num_labels=3, token_loss='sentence').check(None)


def test_for_task_passes_only_the_options_a_kind_reads():
  ner = objectives.for_task(tasks.get_task('conll2003'), options={'token_loss': 'fixed'})
  assert ner.token_loss == 'fixed' and ner.num_labels == 9
  sst2 = objectives.for_task(tasks.get_task('sst2'), pooling='mean',
                             options={'token_loss': 'fixed'})
  assert sst2 == Classification(num_labels=2, pooling='mean')
  assert isinstance(objectives.for_task(tasks.get_task('stsb')), Regression)
  assert isinstance(objectives.for_task(tasks.get_task('squad')), Span)


@pytest.mark.parametrize('objective', [
    Classification(num_labels=3, pooling='mean', head_hidden=8), Regression(pooling='pooler'),
    Tagging(num_labels=9, token_loss='fixed', tokens_per_example=13.5), Span()])
def test_objectives_round_trip_through_their_dicts(objective):
  assert objectives.from_dict(objective.to_dict()) == objective
  with pytest.raises(ValueError, match='Unknown task kind'):
    objectives.from_dict({**objective.to_dict(), 'kind': 'ranking'})


def test_losses_ignore_padding_rows_and_predictions_follow_the_kind():
  logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
  batch = {'input_ids': jnp.ones((3, 4), jnp.int32), 'labels': jnp.array([0, 1, 1]),
           'weights': jnp.array([1.0, 1.0, 0.0])}
  loss, count = Classification().loss(logits, batch)
  assert float(count) == 2.0
  assert float(loss) == pytest.approx(float(jnp.log1p(jnp.exp(-2.0))), rel=1e-5)
  np.testing.assert_array_equal(Classification().predict(logits), [0, 1, 0])
  np.testing.assert_allclose(Classification().averageable(logits).sum(-1), 1.0, rtol=1e-6)
  scores = jnp.array([1.0, 2.0, 9.0])
  loss, _ = Regression().loss(scores, {**batch, 'labels': jnp.array([2.0, 2.0, 0.0])})
  assert float(loss) == pytest.approx(0.5)
  with pytest.raises(ValueError, match='cannot be averaged'):
    Tagging().averageable(logits)
