"""What every objective provides: its head, loss, predictions, scoring and soft targets.

An objective is a frozen (hashable) dataclass, one class per task kind, given to
`TaskModel` as a field. Everything that depends on the kind lives on it, so the
model, the train step, evaluation, saved runs and distillation call its methods and
never switch on a kind string. Adding a kind is one file here plus its line in
`research/objectives/__init__.py`.

Device-side (inside jit): `head`, `loss`, `count`, `predict`, `averageable`,
`teacher_targets`, `soft_loss`. Host-side (numpy): `score`, `soft_targets`,
`predictions_from`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.models.heads import POOLINGS, Head, pool


def weights_of(batch: dict) -> jax.Array:
  """Per-row weights: 1 for real examples, 0 for padding rows (all ones if absent)."""
  weights = batch.get('weights')
  if weights is None:
    return jnp.ones(batch['input_ids'].shape[0], jnp.float32)
  return weights.astype(jnp.float32)


def weighted_mean(terms: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum(terms * weights) / max(sum(weights), 1), sum(weights))."""
  count = weights.sum()
  return (terms * weights).sum() / jnp.maximum(count, 1.0), count


@dataclasses.dataclass(frozen=True)
class Objective:
  """Base class; see the module docstring.

  Attributes:
    num_labels: output classes (tags); fixed by the kind where it has no choice.
    pooling: how sentence-level heads pool tokens: 'cls', 'mean' or 'pooler'.
    head_hidden: width of a dense + activation before the output layer (0 = none).
    head_activation: 'tanh' (BERT, RoBERTa heads), 'relu' (DistilBERT) or 'gelu'.
    head_dropout: dropout before the output layer.
  """
  kind: ClassVar[str] = ''
  # Trainer config fields this kind reads as its own fields (e.g. 'token_loss').
  options: ClassVar[tuple[str, ...]] = ()
  # Whether outputs of several runs can be averaged (ensembles, teacher targets).
  supports_ensemble: ClassVar[bool] = False

  num_labels: int = 2
  pooling: str = 'cls'
  head_hidden: int = 0
  head_activation: str = 'tanh'
  head_dropout: float = 0.1

  @classmethod
  def labels_for(cls, spec) -> dict:
    """The `num_labels` field a task (`TaskSpec`) fixes, as {} or {'num_labels': n}."""
    return {}

  # -- the model side ------------------------------------------------------------
  def check(self, encoder_config, layer_mix: str = 'top') -> None:
    """Raises ValueError for settings this objective cannot use with the model's."""

  def head(self, encoder_config, encoder, features, intermediates, attention_mask,
           deterministic: bool) -> tuple[Any, jax.Array]:
    """(outputs, the features the head read), built inside TaskModel's scope."""
    raise NotImplementedError

  def head_inputs(self, batch: dict, train: bool) -> dict:
    """Extra keyword arguments of `head` drawn from the batch (default: none).

    The masked LM uses it to compute vocabulary logits only where a token is predicted.
    """
    del batch, train
    return {}

  def with_train_statistics(self, features: Sequence[dict]) -> 'Objective':
    """The objective with constants its loss takes from the train features (default: none)."""
    return self

  # -- training ------------------------------------------------------------------
  def loss(self, outputs, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(mean loss over the batch's units, number of units); padding does not count."""
    raise NotImplementedError

  def count(self, batch: dict) -> jax.Array:
    """The units `loss` averages over (rows or tokens); for accumulation weights."""
    return weights_of(batch).sum()

  # -- outputs -------------------------------------------------------------------
  def predict(self, outputs) -> Any:
    """What evaluation gathers per feature (class ids, scores, tag ids, span logits)."""
    return outputs

  def predict_batch(self, outputs, batch: dict) -> Any:
    """What evaluation gathers, given the batch too (language models read their labels)."""
    return self.predict(outputs)

  def averageable(self, outputs) -> jax.Array:
    """The per-example quantity averaged over runs (probabilities or scores)."""
    raise ValueError(f'{self.kind} outputs cannot be averaged over runs (ensembles, '
                     'teacher targets); use one run at a time')

  def predictions_from(self, averaged: np.ndarray) -> list:
    """Predictions (what `score` takes) from averaged `averageable` outputs."""
    raise ValueError(f'{self.kind} has no ensemble predictions')

  def score(self, spec, examples: Sequence[dict], features: Sequence[dict],
            predictions: Sequence[Any]) -> dict[str, float]:
    """The task's metrics (percent) from per-feature `predict` outputs."""
    raise NotImplementedError

  # -- distillation (soft targets) -------------------------------------------------
  def soft_targets(self, averageables: Sequence[np.ndarray], temperature: float) -> np.ndarray:
    """Host: one target per example from teachers' `averageable` outputs."""
    raise ValueError(f'Distillation from soft targets does not support {self.kind} tasks')

  def teacher_targets(self, outputs, temperature: float) -> jax.Array:
    """Device: a teacher's soft targets from its raw outputs (in-step teachers)."""
    raise ValueError(f'Distillation from soft targets does not support {self.kind} tasks')

  def soft_loss(self, outputs, targets, weights, temperature: float) -> jax.Array:
    """Weighted mean loss of the student's outputs against soft targets."""
    raise ValueError(f'Distillation from soft targets does not support {self.kind} tasks')

  # -- (de)serialisation -----------------------------------------------------------
  def to_dict(self) -> dict:
    return {'kind': self.kind, **dataclasses.asdict(self)}

  def replace(self, **changes) -> 'Objective':
    return dataclasses.replace(self, **changes)


class SentenceLevel(Objective):
  """A head on one pooled vector per sequence (classification, regression)."""

  def check(self, encoder_config, layer_mix: str = 'top') -> None:
    if self.pooling not in POOLINGS:
      raise ValueError(f'Unknown pooling {self.pooling!r}; expected one of {POOLINGS}')
    if self.pooling == 'pooler' and (layer_mix != 'top' or not encoder_config.use_pooler):
      raise ValueError("pooling='pooler' needs layer_mix='top' and an encoder with a pooler")

  def outputs(self) -> int:
    return self.num_labels

  def head(self, encoder_config, encoder, features, intermediates, attention_mask,
           deterministic):
    pooled = pool(features, intermediates, attention_mask, self.pooling)
    logits = Head(self.outputs(), encoder_config, self.head_hidden, self.head_activation,
                  self.head_dropout, name='head')(pooled, deterministic)
    return logits, pooled


class TokenLevel(Objective):
  """A head on every token's features (tagging, span extraction)."""

  def outputs(self) -> int:
    return self.num_labels

  def head(self, encoder_config, encoder, features, intermediates, attention_mask,
           deterministic):
    logits = Head(self.outputs(), encoder_config, self.head_hidden, self.head_activation,
                  self.head_dropout, name='head')(features, deterministic)
    return logits, features
