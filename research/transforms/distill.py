"""Knowledge distillation on a task's outputs (Hinton et al. 2015): targets, losses, terms.

The student learns from the teachers' softened class probabilities (or, for regression,
their predicted scores) as well as from the labels. What "softened" and "the loss"
mean per task kind is the objective's business (`research/objectives`); this module
holds the kind-free parts and the loss terms the train step sums:

    terms = [TaskLoss(objective, weight=1 - alpha),
             SoftTargets(objective, temperature=2.0, weight=alpha)]    # cached targets
    terms = [TaskLoss(objective, weight=1 - alpha),
             TeacherSoftTargets(objective, temperature=2.0, weight=alpha)]  # in-step teacher

`SoftTargets` reads precomputed targets from `batch['teacher']` (the teachers ran once
over the train set, `research/train/teachers.py`); `TeacherSoftTargets` reads the
frozen teachers' outputs computed inside the same jitted step (the step passes them).
Either way nothing of a teacher is differentiated, updated or checkpointed. Several
teachers form an ensemble by averaging their softened probabilities (or scores).

A loss term is any object with `name`, `weight`, `needs` (intermediates the student
forward must return, e.g. {'attentions'}), `teacher_needs`, `count(batch)` (the units
its value averages over, for gradient accumulation) and
`__call__(student, teachers, batch) -> (value, metrics)`, where `student` is the
model's `(outputs, intermediates)` and `teachers` a tuple of the same per teacher (empty
without a teacher). A term may also own trainable parameters: it then has
`init(rng, student_config, teacher_configs)` and is called with `params=` (see
`research/train/step.py`). Terms over hidden states, attention maps and relations are in
`research/transforms/distill_intermediate.py`.

Example:
  >>> from research.objectives import Classification
  >>> t = teacher_targets([np.array([[0.9, 0.1]])], Classification(), temperature=1.0)
  >>> float(soft_loss(Classification(), np.log(t), t, np.ones(1), 1.0)) < 1e-6
  True
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(logits / T) from probabilities p = softmax(logits), i.e. p^(1/T), renormalised.

  Exact, because log p differs from the logits only by a per-row constant.
  """
  if temperature <= 0:
    raise ValueError(f'temperature must be positive, got {temperature}')
  probs = np.asarray(probs, np.float64)
  scaled = np.power(probs, 1.0 / temperature)
  return (scaled / scaled.sum(-1, keepdims=True)).astype(np.float32)


def kl_to_targets(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                  temperature: float = 1.0) -> jax.Array:
  """Weighted mean of T^2 * KL(targets || softmax(logits / T)) over rows.

  It has the gradients of the cross-entropy to the targets but is 0 when the student
  matches; the T^2 keeps the gradient's scale independent of T (Hinton et al.). Rows
  with weight 0 (padding) do not count.
  """
  terms = temperature ** 2 * optax.losses.kl_divergence(
      jax.nn.log_softmax(logits.astype(jnp.float32) / temperature), targets)
  return (terms * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def teacher_targets(outputs: Sequence[np.ndarray], objective: Any,
                    temperature: float = 1.0) -> np.ndarray:
  """One target per example from one or more teachers' outputs on the same examples.

  Args:
    outputs: per teacher, its `objective.averageable` outputs (class probabilities
      [n, classes], or scores [n]), as `saved_runs.run_outputs` returns them.
    objective: the task's objective (it defines softening and averaging).
    temperature: softening of the class probabilities (1 = as the teacher gave them).

  Returns:
    [n, classes] mean softened probabilities, or [n] mean scores (float32).
  """
  if not outputs:
    raise ValueError('no teacher outputs')
  shapes = {np.shape(o) for o in outputs}
  if len(shapes) != 1:
    raise ValueError(f'teachers disagree on the output shape: {sorted(shapes)}')
  return objective.soft_targets(outputs, temperature)


def soft_loss(objective: Any, logits: jax.Array, targets: jax.Array, weights: jax.Array,
              temperature: float = 1.0) -> jax.Array:
  """Weighted mean distillation loss of the student's outputs against soft targets."""
  return objective.soft_loss(logits, targets, weights, temperature)


def _row_weights(batch: dict) -> jax.Array:
  weights = batch.get('weights')
  if weights is None:
    return jnp.ones(batch['input_ids'].shape[0], jnp.float32)
  return weights.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _SoftLoss:
  """Fields and row count shared by the soft-target terms (the mean is over real rows)."""
  objective: Any
  temperature: float = 1.0
  weight: float = 1.0
  name: str = 'distill_loss'
  needs: frozenset = frozenset()
  teacher_needs: frozenset = frozenset()

  def count(self, batch: dict) -> jax.Array:
    return _row_weights(batch).sum()


@dataclasses.dataclass(frozen=True)
class SoftTargets(_SoftLoss):
  """The soft loss against precomputed targets in `batch['teacher']` (cached teachers)."""

  def __call__(self, student, teachers, batch):
    del teachers
    value = self.objective.soft_loss(student[0], batch['teacher'], _row_weights(batch),
                                     self.temperature)
    return value, {}


@dataclasses.dataclass(frozen=True)
class TeacherSoftTargets(_SoftLoss):
  """The soft loss against frozen teachers run in the same step (their mean target)."""

  def __call__(self, student, teachers, batch):
    if not teachers:
      raise ValueError('TeacherSoftTargets needs a teacher in the train step')
    targets = sum(self.objective.teacher_targets(t[0], self.temperature)
                  for t in teachers) / len(teachers)
    value = self.objective.soft_loss(student[0], targets, _row_weights(batch),
                                     self.temperature)
    return value, {}
