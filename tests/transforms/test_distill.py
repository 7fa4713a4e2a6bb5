"""Distillation targets and losses (research/transforms/distill.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.objectives import Classification, Regression, Span, Tagging
from research.transforms import distill


def test_soften_equals_softmax_of_scaled_logits():
  logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
  probs = np.asarray(jax.nn.softmax(logits, -1))
  for temperature in (0.5, 1.0, 4.0):
    np.testing.assert_allclose(distill.soften(probs, temperature),
                               jax.nn.softmax(logits / temperature, -1), rtol=1e-5)
  with pytest.raises(ValueError, match='temperature'):
    distill.soften(probs, 0.0)


def test_teacher_targets_average_softened_probabilities_and_scores():
  a = np.array([[0.9, 0.1], [0.2, 0.8]])
  b = np.array([[0.5, 0.5], [0.4, 0.6]])
  targets = distill.teacher_targets([a, b], Classification(), 2.0)
  np.testing.assert_allclose(targets, (distill.soften(a, 2.0) + distill.soften(b, 2.0)) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  scores = distill.teacher_targets([np.array([1.0, 3.0]), np.array([2.0, 5.0])],
                                   Regression())
  np.testing.assert_allclose(scores, [1.5, 4.0])
  with pytest.raises(ValueError, match='output shape'):
    distill.teacher_targets([a, a[:1]], Classification())
  with pytest.raises(ValueError, match='tagging'):
    distill.teacher_targets([a], Tagging())


def test_soft_loss_is_zero_at_the_target_and_has_the_cross_entropy_gradient():
  rng = np.random.default_rng(0)
  teacher_logits = rng.normal(size=(4, 3)).astype(np.float32)
  student = jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32))
  weights = jnp.ones(4)
  for temperature in (1.0, 3.0):
    targets = jax.nn.softmax(teacher_logits / temperature, -1)
    at_target = distill.soft_loss(Classification(), teacher_logits, targets, weights,
                                  temperature)
    assert abs(float(at_target)) < 1e-6
    # KL and cross-entropy differ by the targets' entropy, a constant: same gradient,
    # scaled by T^2 (so the soft term's size does not depend on T).
    grad = jax.grad(distill.soft_loss, argnums=1)(Classification(), student, targets,
                                                  weights, temperature)
    ce = lambda s, t=targets, temp=temperature: temp ** 2 * optax.softmax_cross_entropy(
        s / temp, t).mean()
    np.testing.assert_allclose(grad, jax.grad(ce)(student), rtol=1e-5, atol=1e-7)


def test_soft_loss_ignores_padding_rows_and_handles_regression():
  logits = jnp.array([[3.0, -3.0], [0.0, 0.0]])
  targets = jnp.array([[0.5, 0.5], [0.5, 0.5]])
  only_second = distill.soft_loss(Classification(), logits, targets, jnp.array([0.0, 1.0]))
  assert abs(float(only_second)) < 1e-6
  mse = distill.soft_loss(Regression(), jnp.array([1.0, 2.0, 9.0]), jnp.array([2.0, 2.0, 0.0]),
                          jnp.array([1.0, 1.0, 0.0]))
  assert float(mse) == pytest.approx(0.5)
  with pytest.raises(ValueError, match='span'):
    distill.soft_loss(Span(), logits, targets, jnp.ones(2))
