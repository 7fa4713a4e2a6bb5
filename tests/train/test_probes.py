"""Tests of research.train.probes on synthetic features [N, L+1, hidden]."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.train import probes
from research.transforms.layer_mix import scalar_mix

HP = dict(lr=1e-2, mix_lr=3e-2, weight_decay=1e-2)


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """3 states of width 8: state 1 carries the label with a margin, 0 and 2 are noise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n).astype(np.int32)
  x = rng.normal(size=(n, 3, 8)).astype(np.float32)
  direction = np.linspace(1.0, -1.0, 8) / np.linalg.norm(np.linspace(1.0, -1.0, 8))
  x[:, 1] += np.outer(np.where(y == 1, 3.0, -3.0), direction)
  return x, y


def test_probes_find_the_informative_layer():
  x, y = separable(512, seed=0)
  x_dev, y_dev = separable(256, seed=1)
  params, history = probes.train_probes(x, y, 2, epochs=10, batch_size=32, seed=0, **HP)
  assert history[-1] < history[0] and all(np.isfinite(history))
  layers, mix = probes.accuracies(params, x_dev, y_dev)
  assert layers.shape == (3,)
  assert layers[1] >= 97.0                       # the margin is 3 standard deviations
  assert layers[0] <= 65.0 and layers[2] <= 65.0  # noise: chance (50) +- a few points
  assert mix >= 95.0
  weights = probes.mix_weights(params)
  np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)
  assert int(np.argmax(weights)) == 1


def test_accuracies_by_hand():
  y = np.array([0, 1, 1, 1], np.int32)
  x = np.zeros((4, 2, 3), np.float32)
  params = probes.init_probes(2, 3, 2)
  # Biases only: layer 0 always says 1, layer 1 always 0, the mix probe always 1.
  params['layers']['b'] = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  params['mix']['b'] = jnp.array([0.0, 1.0])
  layers, mix = probes.accuracies(params, x, y, batch_size=3)  # two batches: 3 + 1
  np.testing.assert_allclose(layers, [75.0, 25.0])
  assert mix == 75.0


def test_minibatch_orders_are_per_epoch_permutations():
  orders = probes.minibatch_orders(10, 4, epochs=3, seed=0)
  assert orders.shape == (3, 2, 4)  # 10 // 4 full steps; 2 examples left out per epoch
  for epoch in orders:
    assert len(set(epoch.ravel())) == 8 and set(epoch.ravel()) <= set(range(10))
  assert not np.array_equal(orders[0], orders[1])
  np.testing.assert_array_equal(orders, probes.minibatch_orders(10, 4, epochs=3, seed=0))


def train_alone(loss_fn, params, tx, x, y, orders):
  """Plain minibatch loop over one probe's own loss, in the given order."""
  state = tx.init(params)

  @jax.jit
  def step(params, state, xb, yb):
    grads = jax.grad(loss_fn)(params, xb, yb)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for idx in orders.reshape(-1, orders.shape[-1]):
    params, state = step(params, state, x[idx], y[idx])
  return params


def test_joint_training_equals_each_probe_alone():
  """The module docstring's claim: the summed loss gives every probe its own updates."""
  x, y = separable(96, seed=2)
  epochs, batch_size, seed = 3, 16, 5
  joint, _ = probes.train_probes(x, y, 2, epochs=epochs, batch_size=batch_size,
                                 seed=seed, **HP)
  orders = probes.minibatch_orders(len(x), batch_size, epochs, seed)
  ce = optax.softmax_cross_entropy_with_integer_labels
  tol = dict(rtol=1e-4, atol=1e-5)  # float32, after 18 Adam steps

  def layer_loss(j):
    return lambda p, xb, yb: ce(xb[:, j] @ p['w'] + p['b'], yb).mean()

  layer_tx = optax.adamw(HP['lr'], weight_decay=HP['weight_decay'],
                         mask={'w': True, 'b': False})
  for j in range(x.shape[1]):
    alone = train_alone(layer_loss(j), {'w': jnp.zeros((8, 2)), 'b': jnp.zeros(2)},
                        layer_tx, x, y, orders)
    np.testing.assert_allclose(joint['layers']['w'][j], alone['w'], **tol)
    np.testing.assert_allclose(joint['layers']['b'][j], alone['b'], **tol)

  def mix_loss(p, xb, yb):
    mixed = scalar_mix(p['weights'], p['gamma'], tuple(xb[:, j] for j in range(3)))
    return ce(mixed @ p['w'] + p['b'], yb).mean()

  mix_tx = optax.partition(
      {'probe': optax.adamw(HP['lr'], weight_decay=HP['weight_decay'],
                            mask={'w': True, 'b': False, 'weights': False,
                                  'gamma': False}),
       'mix': optax.adam(HP['mix_lr'])},
      {'w': 'probe', 'b': 'probe', 'weights': 'mix', 'gamma': 'mix'})
  alone = train_alone(mix_loss, {'weights': jnp.zeros(3), 'gamma': jnp.ones(()),
                                 'w': jnp.zeros((8, 2)), 'b': jnp.zeros(2)},
                      mix_tx, x, y, orders)
  for key in ('weights', 'gamma', 'w', 'b'):
    np.testing.assert_allclose(joint['mix'][key], alone[key], **tol, err_msg=key)
  # The probes did move: equality is not two untouched zero initialisations.
  assert float(jnp.abs(joint['layers']['w']).max(axis=(1, 2)).min()) > 1e-2
  assert float(jnp.abs(joint['mix']['weights']).max()) > 1e-3


def test_weight_decay_acts_on_kernels_only():
  tx = probes.probe_optimizer(lr=0.1, mix_lr=0.1, weight_decay=0.5)
  params = jax.tree.map(lambda a: a + 1.0, probes.init_probes(2, 3, 2))
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  # With zero gradients only decoupled decay moves a parameter: -lr * wd * value.
  for group, key in (('layers', 'w'), ('mix', 'w')):
    np.testing.assert_allclose(updates[group][key], -0.05, rtol=1e-6)
  for group, key in (('layers', 'b'), ('mix', 'b'), ('mix', 'weights'), ('mix', 'gamma')):
    np.testing.assert_allclose(updates[group][key], 0.0)


def test_batch_larger_than_the_data_is_one_full_batch():
  x, y = separable(40, seed=3)
  _, history = probes.train_probes(x, y, 2, epochs=2, batch_size=1000, seed=0, **HP)
  assert len(history) == 2 and history[1] < history[0]
