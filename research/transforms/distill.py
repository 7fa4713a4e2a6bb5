"""Knowledge distillation on a task's outputs (Hinton et al. 2015): pure target and loss fns.

The student learns from the teachers' softened class probabilities (or, for regression,
their predicted scores) as well as from the labels:

    targets = teacher_targets([probs_a, probs_b], 'classification', temperature=2.0)
    loss = (1 - alpha) * task_loss + alpha * soft_loss('classification', logits, targets,
                                                       weights, temperature=2.0)

Teachers are frozen by construction: only their outputs enter the student's step, so
nothing of theirs is differentiated, updated or checkpointed again. Several teachers
form an ensemble by averaging their softened probabilities (or scores).

Example:
  >>> import numpy as np
  >>> t = teacher_targets([np.array([[0.9, 0.1]])], 'classification', temperature=1.0)
  >>> float(soft_loss('classification', np.log(t), t, np.ones(1), 1.0)) < 1e-6
  True
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

KINDS = ('classification', 'regression')


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(logits / T) from probabilities p = softmax(logits), i.e. p^(1/T), renormalised.

  Exact, because log p differs from the logits only by a per-row constant.
  """
  if temperature <= 0:
    raise ValueError(f'temperature must be positive, got {temperature}')
  probs = np.asarray(probs, np.float64)
  scaled = np.power(probs, 1.0 / temperature)
  return (scaled / scaled.sum(-1, keepdims=True)).astype(np.float32)


def teacher_targets(outputs: Sequence[np.ndarray], kind: str,
                    temperature: float = 1.0) -> np.ndarray:
  """One target per example from one or more teachers' outputs on the same examples.

  Args:
    outputs: per teacher, class probabilities [n, classes] (classification) or
      scores [n] (regression), as `saved_runs.run_outputs` returns them.
    kind: 'classification' or 'regression'.
    temperature: softening of the class probabilities (1 = as the teacher gave them).

  Returns:
    [n, classes] mean softened probabilities, or [n] mean scores (float32).
  """
  if kind not in KINDS:
    raise ValueError(f'Distillation supports {KINDS} tasks, got {kind!r}')
  if not outputs:
    raise ValueError('no teacher outputs')
  shapes = {np.shape(o) for o in outputs}
  if len(shapes) != 1:
    raise ValueError(f'teachers disagree on the output shape: {sorted(shapes)}')
  if kind == 'regression':
    return np.mean(np.asarray(outputs, np.float32), 0)
  return np.mean([soften(o, temperature) for o in outputs], 0).astype(np.float32)


def soft_loss(kind: str, logits: jax.Array, targets: jax.Array, weights: jax.Array,
              temperature: float = 1.0) -> jax.Array:
  """Weighted mean distillation loss of the student's logits against teacher targets.

  Classification: T^2 * KL(targets || softmax(logits / T)), which has the gradients of
  the cross-entropy but is 0 when the student matches; the T^2 keeps the gradient's scale
  independent of T (Hinton et al.). Regression: squared error to the teacher's score.
  Rows with weight 0 (padding) do not count.
  """
  if kind == 'classification':
    terms = temperature ** 2 * optax.losses.kl_divergence(
        jax.nn.log_softmax(logits.astype(jnp.float32) / temperature), targets)
  elif kind == 'regression':
    terms = jnp.square(logits.astype(jnp.float32) - targets)
  else:
    raise ValueError(f'Distillation supports {KINDS} tasks, got {kind!r}')
  return (terms * weights).sum() / jnp.maximum(weights.sum(), 1.0)
