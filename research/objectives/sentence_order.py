"""Sentence-pair pre-training tasks and their combination with masked LM.

`NextSentence` (BERT's NSP, `cls.seq_relationship`) and `SentenceOrder` (ALBERT's SOP,
`sop_classifier`) are one binary linear head on the pooled [CLS] vector (the encoder's
tanh pooler by default); the labels are the batch's 'pair_labels' [b] with Hugging
Face's conventions:
  NSP  0 = segment B continues A, 1 = B is a random segment (`next_sentence_label`);
  SOP  0 = A then B in their original order, 1 = swapped (`sentence_order_label`).
The pairs come from `research/data/corpus.py` (`pair_features`).

`PreTraining(pair='nsp' | 'sop' | '')` is masked LM plus that pair task: outputs
{'mlm': [b, T, vocab], 'pair': [b, 2]}, loss = MLM mean + pair mean (BERT's
`BertForPreTraining` total loss). Params: 'head' (the LM transform and bias, as
`MaskedLM`) and 'pair_head/out'.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from research.models.heads import POOLINGS, Head, pool
from research.objectives.base import SentenceLevel, weighted_mean, weights_of
from research.objectives.masked_lm import (MaskedLM, gather_positions, label_predictions,
                                           lm_logits, lm_scores, token_cross_entropy)

PAIR_TASKS = ('nsp', 'sop')
PAIR_LABELS = 'pair_labels'


def _check_pooling(pooling, encoder_config, layer_mix):
  if pooling not in POOLINGS:
    raise ValueError(f'Unknown pooling {pooling!r}; expected one of {POOLINGS}')
  if pooling == 'pooler' and (layer_mix != 'top' or not encoder_config.use_pooler):
    raise ValueError("the pair head's pooling='pooler' needs layer_mix='top' and an "
                     "encoder with a pooler; use pooling='cls' otherwise")


def pair_loss(logits, batch):
  """Mean cross-entropy of the pair logits [b, 2] over real rows, and the row count."""
  terms = optax.softmax_cross_entropy_with_integer_labels(logits, batch[PAIR_LABELS])
  return weighted_mean(terms, weights_of(batch))


def pair_accuracy(features, predictions) -> float:
  labels = np.asarray([int(f[PAIR_LABELS]) for f in features])
  return 100.0 * float(np.mean(np.asarray(predictions) == labels))


@dataclasses.dataclass(frozen=True)
class NextSentence(SentenceLevel):
  """NSP alone: a binary head on the pooled vector (see the module docstring)."""
  kind = 'next_sentence'
  num_labels: int = 2
  pooling: str = 'pooler'
  head_dropout: float = 0.0  # BERT's seq_relationship reads the pooler directly

  def check(self, encoder_config, layer_mix='top'):
    _check_pooling(self.pooling, encoder_config, layer_mix)
    if self.num_labels != 2:
      raise ValueError(f'{self.kind} is binary: num_labels must be 2, got {self.num_labels}')

  def loss(self, outputs, batch):
    return pair_loss(outputs, batch)

  def predict(self, outputs):
    return jnp.argmax(outputs, -1)

  def score(self, spec, examples, features, predictions):
    return {'pair_accuracy': pair_accuracy(features, predictions)}


@dataclasses.dataclass(frozen=True)
class SentenceOrder(NextSentence):
  """SOP alone (ALBERT): as NSP, with dropout before the classifier."""
  kind = 'sentence_order'
  head_dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class PreTraining(MaskedLM):
  """Masked LM + a pair task; see the module docstring.

  Attributes:
    pair: 'nsp', 'sop' or '' (masked LM only, with the same output layout).
    pooling: what the pair head reads ('pooler' as BERT and ALBERT).
    head_dropout: dropout before the pair classifier (0 for NSP as BERT; ALBERT 0.1).
  """
  kind = 'pretraining'
  pair: str = 'nsp'
  pooling: str = 'pooler'
  head_dropout: float = 0.0

  def check(self, encoder_config, layer_mix='top'):
    super().check(encoder_config, layer_mix)
    if self.pair not in PAIR_TASKS + ('',):
      raise ValueError(f"pair must be one of {PAIR_TASKS} or '' (none), got {self.pair!r}")
    if self.pair:
      _check_pooling(self.pooling, encoder_config, layer_mix)

  def head(self, encoder_config, encoder, features, intermediates, attention_mask,
           deterministic, positions=None):
    at = features if positions is None else gather_positions(features, positions)
    outputs = {'mlm': lm_logits(encoder_config, encoder, at, 'head', self.transform_activation)}
    if self.pair:
      pooled = pool(features, intermediates, attention_mask, self.pooling)
      outputs['pair'] = Head(2, encoder_config, 0, 'tanh', self.head_dropout,
                             name='pair_head')(pooled, deterministic)
    return outputs, features

  def vocabulary_logits(self, outputs):
    return outputs['mlm']

  def loss(self, outputs, batch):
    loss, count = token_cross_entropy(
        outputs['mlm'], self.labels_at(outputs['mlm'], batch['labels']), weights_of(batch))
    if self.pair:
      loss = loss + pair_loss(outputs['pair'], batch)[0]
    return loss, count

  def predict(self, outputs):
    predictions = {'ids': jnp.argmax(outputs['mlm'], -1)}
    if self.pair:
      predictions['pair'] = jnp.argmax(outputs['pair'], -1)
    return predictions

  def predict_batch(self, outputs, batch):
    predictions = label_predictions(outputs['mlm'], batch['labels'])
    if self.pair:
      predictions['pair'] = jnp.argmax(outputs['pair'], -1)
    return predictions

  def score(self, spec, examples, features, predictions):
    scores = lm_scores(features, predictions)
    if self.pair:
      scores[f'{self.pair}_accuracy'] = pair_accuracy(features,
                                                      [p['pair'] for p in predictions])
    return scores
