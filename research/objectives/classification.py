"""Single- and pair-sentence classification: pooled features -> class logits [batch, C].

Loss: cross-entropy over real rows. Predictions: class ids. Ensembles and teachers
average class probabilities; soft targets are softened probabilities and the soft loss
is T^2 * KL (Hinton et al. 2015).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.evaluate import metrics
from research.objectives.base import SentenceLevel, weighted_mean, weights_of
from research.transforms import distill


@dataclasses.dataclass(frozen=True)
class Classification(SentenceLevel):
  """See the module docstring; `num_labels` >= 2 classes."""
  kind = 'classification'
  supports_ensemble = True

  @classmethod
  def labels_for(cls, spec):
    return {'num_labels': max(len(spec.label_names), 2)}

  def check(self, encoder_config, layer_mix='top'):
    super().check(encoder_config, layer_mix)
    if self.num_labels < 2:
      raise ValueError(f'classification needs num_labels >= 2, got {self.num_labels}')

  def loss(self, outputs, batch):
    terms = optax.softmax_cross_entropy_with_integer_labels(outputs, batch['labels'])
    return weighted_mean(terms, weights_of(batch))

  def predict(self, outputs):
    return jnp.argmax(outputs, -1)

  def averageable(self, outputs):
    return jax.nn.softmax(outputs, -1)

  def predictions_from(self, averaged):
    return list(np.asarray(averaged).argmax(-1))

  def score(self, spec, examples, features, predictions):
    references = np.asarray([f['labels'] for f in features])
    return metrics.compute(spec, np.asarray(predictions), references)

  def soft_targets(self, averageables: Sequence[np.ndarray], temperature: float):
    return np.mean([distill.soften(p, temperature) for p in averageables], 0).astype(np.float32)

  def teacher_targets(self, outputs, temperature):
    return jax.nn.softmax(outputs.astype(jnp.float32) / temperature, -1)

  def soft_loss(self, outputs, targets, weights, temperature):
    return distill.kl_to_targets(outputs, targets, weights, temperature)
