"""Token tagging (CoNLL-2003 NER): every token's features -> tag logits [batch, length, C].

Labels sit on each word's first sub-token; other tokens carry IGNORE_INDEX and do not
count. Scoring is entity-level F1 over words (seqeval semantics).

Loss: cross-entropy over the labelled tokens, normalised by `token_loss`:
  'batch'  the batch's own labelled-token count (transformers' mean per batch);
  'fixed'  a constant: the batch's rows times the train set's mean labelled tokens per
           example (`with_train_statistics`), so every token weighs the same in every
           batch. With length bucketing, batches of short and long sentences hold very
           different token counts, and a per-batch mean weighs a token of a short batch
           several times more than one of a long batch.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from research.data.encoded import IGNORE_INDEX
from research.data.tokenize import word_level_predictions
from research.evaluate import metrics
from research.objectives.base import TokenLevel, weights_of

TOKEN_LOSSES = ('batch', 'fixed')


@dataclasses.dataclass(frozen=True)
class Tagging(TokenLevel):
  """See the module docstring; `num_labels` >= 2 tags."""
  kind = 'tagging'
  options = ('token_loss',)
  token_loss: str = 'batch'
  tokens_per_example: float = 0.0

  @classmethod
  def labels_for(cls, spec):
    return {'num_labels': max(len(spec.label_names), 2)}

  def check(self, encoder_config, layer_mix='top'):
    if self.num_labels < 2:
      raise ValueError(f'tagging needs num_labels >= 2, got {self.num_labels}')
    if self.token_loss not in TOKEN_LOSSES:
      raise ValueError(f'token_loss must be one of {TOKEN_LOSSES}, got {self.token_loss!r}')
    if self.token_loss == 'fixed' and self.tokens_per_example <= 0:
      raise ValueError("token_loss='fixed' needs tokens_per_example > 0 (set by "
                       'with_train_statistics from the train features)')

  def with_train_statistics(self, features):
    if self.token_loss != 'fixed':
      return self
    labelled = [int(np.sum(np.asarray(f['labels']) != IGNORE_INDEX)) for f in features]
    return self.replace(tokens_per_example=float(np.mean(labelled)))

  def _valid(self, batch):
    labels = batch['labels']
    return (labels != IGNORE_INDEX).astype(jnp.float32) * weights_of(batch)[:, None]

  def loss(self, outputs, batch):
    labels = batch['labels']
    valid = self._valid(batch)
    terms = optax.softmax_cross_entropy_with_integer_labels(
        outputs, jnp.where(labels == IGNORE_INDEX, 0, labels))
    if self.token_loss == 'fixed':
      rows = weights_of(batch).sum()
      return (terms * valid).sum() / jnp.maximum(rows * self.tokens_per_example, 1.0), rows
    count = valid.sum()
    return (terms * valid).sum() / jnp.maximum(count, 1.0), count

  def count(self, batch):
    if self.token_loss == 'fixed':  # the normaliser is per row: micro-batches share by rows
      return weights_of(batch).sum()
    return self._valid(batch).sum()

  def predict(self, outputs):
    return jnp.argmax(outputs, -1)

  def score(self, spec, examples, features, predictions):
    refs, preds = word_level_predictions([f['labels'] for f in features], predictions)
    return metrics.compute(spec, preds, refs)
