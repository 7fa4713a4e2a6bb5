"""Linear probes on frozen per-layer features: one per layer, and one on the ELMo mix.

Features are float32 [N, L+1, hidden], one pooled vector per hidden state
(`research.evaluate.features`). On them we train, in one loop:
  * L+1 independent linear probes (softmax regression), one per layer;
  * one probe on the ELMo scalar mix ``gamma * sum_j softmax(w)_j x_j``
    (`research.transforms.layer_mix.scalar_mix`), with w, gamma and the probe
    trained jointly.
The loss is the sum of the probes' mean cross-entropies. Their parameters are
disjoint and AdamW is per-coordinate (no global-norm clipping), so the summed loss
gives every probe the same updates as training it on its own with the same minibatch
order (tests/train/test_probes.py checks this).

Example:
  >>> params, losses = train_probes(x, y, num_classes=2, epochs=10, batch_size=256,
  ...                               lr=1e-3, mix_lr=1e-2, weight_decay=1e-2, seed=0)
  >>> per_layer, mix = accuracies(params, x_dev, y_dev)   # percent: [L+1], scalar
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.evaluate import metrics
from research.transforms.layer_mix import scalar_mix

# The mix's own scalars; every other parameter is a probe's weight or bias.
_MIX_SCALARS = ('weights', 'gamma')


def init_probes(num_states: int, hidden: int, num_classes: int) -> dict:
  """Zero-initialised probes; mix weights 0 (uniform softmax) and gamma 1.

  Returns:
    ``{'layers': {'w': [L+1, hidden, C], 'b': [L+1, C]},
    'mix': {'weights': [L+1], 'gamma': [], 'w': [hidden, C], 'b': [C]}}``.
  """
  return {
      'layers': {'w': jnp.zeros((num_states, hidden, num_classes)),
                 'b': jnp.zeros((num_states, num_classes))},
      'mix': {'weights': jnp.zeros((num_states,)), 'gamma': jnp.ones(()),
              'w': jnp.zeros((hidden, num_classes)), 'b': jnp.zeros((num_classes,))},
  }


def probe_logits(params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-layer logits [b, L+1, C] and scalar-mix logits [b, C] for features [b, L+1, h]."""
  layers = jnp.einsum('blh,lhc->blc', x, params['layers']['w']) + params['layers']['b']
  mix = params['mix']
  mixed = scalar_mix(mix['weights'], mix['gamma'],
                     tuple(x[:, j] for j in range(x.shape[1])))
  return layers, mixed @ mix['w'] + mix['b']


def probe_optimizer(lr: float, mix_lr: float,
                    weight_decay: float) -> optax.GradientTransformation:
  """AdamW on the probes (decay on the kernels 'w' only); Adam on the mix scalars.

  Args:
    lr: learning rate of every probe's weights and biases.
    mix_lr: learning rate of the mix weights and gamma (few, slow-moving scalars).
    weight_decay: decoupled weight decay of the probe kernels.
  Returns:
    An ``optax.partition`` over a params tree from `init_probes`.
  """
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: 'mix' if kp[0].key == 'mix' and kp[-1].key in _MIX_SCALARS
        else 'probe', params)

  def kernels(params):  # params here hold MaskedNodes where the label is 'mix'
    return jax.tree_util.tree_map_with_path(lambda kp, _: kp[-1].key == 'w', params)

  return optax.partition(
      {'probe': optax.adamw(lr, weight_decay=weight_decay, mask=kernels),
       'mix': optax.adam(mix_lr)}, labels)


def minibatch_orders(n: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
  """Example indices [epochs, n // batch_size, batch_size]: a fresh permutation per epoch.

  The last ``n % batch_size`` examples of each permutation are left out, so every
  step has a full batch (one compiled shape).
  """
  rng = np.random.default_rng(seed)
  steps = n // batch_size
  return np.stack([rng.permutation(n)[:steps * batch_size].reshape(steps, batch_size)
                   for _ in range(epochs)])


def train_probes(x: np.ndarray, y: np.ndarray, num_classes: int, *, epochs: int,
                 batch_size: int, lr: float, mix_lr: float, weight_decay: float,
                 seed: int) -> tuple[dict, list[float]]:
  """Trains all probes with minibatches; returns params and the mean loss per epoch.

  Args:
    x: float [N, L+1, hidden] features.
    y: int [N] class ids in [0, num_classes).
    num_classes: number of classes.
    epochs: passes over the data, each in the order of `minibatch_orders`.
    batch_size: examples per step (capped at N).
    lr, mix_lr, weight_decay: see `probe_optimizer`.
    seed: seed of the minibatch order.
  Returns:
    ``(params, history)``: params as in `init_probes`; the summed training loss
    averaged over each epoch's steps.
  """
  n = len(x)
  batch_size = min(batch_size, n)
  params = init_probes(x.shape[1], x.shape[2], num_classes)
  tx = probe_optimizer(lr, mix_lr, weight_decay)
  opt_state = tx.init(params)

  def loss_fn(params, xb, yb):
    layers, mix = probe_logits(params, xb)
    per_layer = optax.softmax_cross_entropy_with_integer_labels(
        layers, yb[:, None]).mean(0)                    # [L+1]
    mix_loss = optax.softmax_cross_entropy_with_integer_labels(mix, yb).mean()
    return per_layer.sum() + mix_loss

  @jax.jit
  def epoch(params, opt_state, x, y, order):
    # One scan over the epoch's steps: one dispatch per epoch, not per step.
    def step(carry, idx):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
    return params, opt_state, losses.mean()

  x, y = jnp.asarray(x), jnp.asarray(y)
  history = []
  for e, order in enumerate(minibatch_orders(n, batch_size, epochs, seed)):
    params, opt_state, loss = epoch(params, opt_state, x, y, jnp.asarray(order))
    history.append(float(loss))
    logging.info('probe epoch %d/%d: summed train loss %.4f', e + 1, epochs, history[-1])
  return params, history


def predict(params: dict, x: np.ndarray,
            batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Predicted classes: per layer [N, L+1] and of the mix probe [N]."""
  argmax = jax.jit(lambda p, xb: tuple(jnp.argmax(l, -1) for l in probe_logits(p, xb)))
  layers, mix = zip(*(argmax(params, jnp.asarray(x[i:i + batch_size]))
                      for i in range(0, len(x), batch_size)))
  return np.concatenate(layers), np.concatenate(mix)


def accuracies(params: dict, x: np.ndarray, y: np.ndarray,
               batch_size: int = 4096) -> tuple[np.ndarray, float]:
  """Accuracy in percent of every layer probe [L+1] and of the mix probe."""
  layers, mix = predict(params, x, batch_size)
  y = np.asarray(y)
  per_layer = np.array([100.0 * metrics.accuracy(layers[:, j], y)
                        for j in range(layers.shape[1])])
  return per_layer, 100.0 * metrics.accuracy(mix, y)


def mix_weights(params: dict) -> np.ndarray:
  """The learned layer weights softmax(w) of the mix probe, [L+1]."""
  return np.asarray(jax.nn.softmax(params['mix']['weights']))
