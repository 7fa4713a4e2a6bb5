"""Extractive QA (SQuAD v1.1): every token's features -> start and end logits.

Outputs {'start': [batch, length], 'end': [batch, length]}. Loss: the mean of the
start and end cross-entropies over real windows. Scoring maps the best span of each
example over its windows back to context text (exact match and F1).
"""
from __future__ import annotations

import dataclasses

import optax

from research.data.squad_features import squad_postprocess
from research.evaluate import metrics
from research.objectives.base import TokenLevel, weighted_mean, weights_of


@dataclasses.dataclass(frozen=True)
class Span(TokenLevel):
  """See the module docstring (two output units: start and end)."""
  kind = 'span'
  num_labels: int = 2

  def check(self, encoder_config, layer_mix='top'):
    if self.num_labels != 2:
      raise ValueError(f'span extraction has two outputs, got num_labels={self.num_labels}')

  def head(self, *args, **kwargs):
    logits, features = super().head(*args, **kwargs)
    return {'start': logits[..., 0], 'end': logits[..., 1]}, features

  def loss(self, outputs, batch):
    start = optax.softmax_cross_entropy_with_integer_labels(outputs['start'],
                                                            batch['start_positions'])
    end = optax.softmax_cross_entropy_with_integer_labels(outputs['end'],
                                                          batch['end_positions'])
    return weighted_mean(0.5 * (start + end), weights_of(batch))

  def score(self, spec, examples, features, predictions):
    answers = squad_postprocess(examples, features, [o['start'] for o in predictions],
                                [o['end'] for o in predictions])
    return metrics.compute(spec, answers, examples)
