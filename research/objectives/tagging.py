"""Token tagging (CoNLL-2003 NER): every token's features -> tag logits [batch, length, C].

Labels sit on each word's first sub-token; other tokens carry IGNORE_INDEX and do not
count. Loss: cross-entropy averaged over the labelled tokens of the batch. Scoring is
entity-level F1 over words (seqeval semantics).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from research.data.encoded import IGNORE_INDEX
from research.data.tokenize import word_level_predictions
from research.evaluate import metrics
from research.objectives.base import TokenLevel, weights_of


@dataclasses.dataclass(frozen=True)
class Tagging(TokenLevel):
  """See the module docstring; `num_labels` >= 2 tags."""
  kind = 'tagging'

  @classmethod
  def labels_for(cls, spec):
    return {'num_labels': max(len(spec.label_names), 2)}

  def check(self, encoder_config, layer_mix='top'):
    if self.num_labels < 2:
      raise ValueError(f'tagging needs num_labels >= 2, got {self.num_labels}')

  def _valid(self, batch):
    labels = batch['labels']
    return (labels != IGNORE_INDEX).astype(jnp.float32) * weights_of(batch)[:, None]

  def loss(self, outputs, batch):
    labels = batch['labels']
    valid = self._valid(batch)
    terms = optax.softmax_cross_entropy_with_integer_labels(
        outputs, jnp.where(labels == IGNORE_INDEX, 0, labels))
    count = valid.sum()
    return (terms * valid).sum() / jnp.maximum(count, 1.0), count

  def count(self, batch):
    return self._valid(batch).sum()

  def predict(self, outputs):
    return jnp.argmax(outputs, -1)

  def score(self, spec, examples, features, predictions):
    refs, preds = word_level_predictions([f['labels'] for f in features], predictions)
    return metrics.compute(spec, preds, refs)
