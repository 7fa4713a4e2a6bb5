"""Sentence(-pair) regression (STS-B): pooled features -> one score per example.

Loss: squared error over real rows. Ensembles and teachers average scores; the soft
loss is the squared error to the teachers' mean score.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from research.evaluate import metrics
from research.objectives.base import SentenceLevel, weighted_mean, weights_of


@dataclasses.dataclass(frozen=True)
class Regression(SentenceLevel):
  """See the module docstring (one output unit; `num_labels` is 1)."""
  kind = 'regression'
  supports_ensemble = True
  num_labels: int = 1

  def check(self, encoder_config, layer_mix='top'):
    super().check(encoder_config, layer_mix)
    if self.num_labels != 1:
      raise ValueError(f'regression has one output, got num_labels={self.num_labels}')

  def head(self, *args, **kwargs):
    scores, pooled = super().head(*args, **kwargs)
    return scores[..., 0], pooled

  def loss(self, outputs, batch):
    return weighted_mean(jnp.square(outputs - batch['labels'].astype(jnp.float32)),
                         weights_of(batch))

  def averageable(self, outputs):
    return outputs

  def predictions_from(self, averaged):
    return list(np.asarray(averaged))

  def score(self, spec, examples, features, predictions):
    references = np.asarray([f['labels'] for f in features])
    return metrics.compute(spec, np.asarray(predictions), references)

  def soft_targets(self, averageables: Sequence[np.ndarray], temperature: float):
    del temperature  # scores are not softened
    return np.mean(np.asarray(averageables, np.float32), 0)

  def teacher_targets(self, outputs, temperature):
    del temperature
    return outputs.astype(jnp.float32)

  def soft_loss(self, outputs, targets, weights, temperature):
    del temperature
    return weighted_mean(jnp.square(outputs.astype(jnp.float32) - targets), weights)[0]
