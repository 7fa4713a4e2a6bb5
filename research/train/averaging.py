"""Exponential moving average (Polyak averaging) of parameters, evaluated instead of them.

`ema <- d * ema + (1 - d) * params` after every optimizer step, with the warm-up
`d_t = min(decay, (1 + t) / (10 + t))` (as in TensorFlow's `ExponentialMovingAverage`
with `num_updates`), so the average is not dominated by the pre-trained starting point
early on. The average is kept in float32 whatever the parameter dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from research.transforms.technique import OwnedState, Technique


def decay_at(step: jax.Array, decay: float) -> jax.Array:
  """The decay used after optimizer step `step` (0-based), warmed up from 0.1."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def init(params):
  return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)


def update(ema, params, step: jax.Array, decay: float):
  """One averaging step; `step` is the 0-based index of the optimizer step just taken."""
  if not 0.0 < decay < 1.0:
    raise ValueError(f'EMA decay must be in (0, 1), got {decay}')
  d = decay_at(step, decay)
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p.astype(jnp.float32), ema, params)


def as_params(ema, like):
  """The average cast to the dtypes of `like` (the live parameters), for evaluation."""
  return jax.tree.map(lambda e, p: e.astype(p.dtype), ema, like)


class ParameterAverage(Technique):
  """`config.ema_decay` > 0: the trainer evaluates (and saves as best) the average of the
  params, kept in the train state as 'ema' and updated after every step."""
  name = 'ema'
  config_keys = ('ema_decay',)

  def active(self, config) -> bool:
    return bool(config.ema_decay)

  def check(self, config) -> None:
    if not 0.0 <= config.ema_decay < 1.0:
      raise ValueError(f'config.ema_decay must be in [0, 1) (0 = off), got {config.ema_decay}')

  def state(self, config) -> OwnedState:
    decay = config.ema_decay
    return OwnedState(init=init, update=lambda ema, params, step: update(ema, params, step, decay),
                      eval_params=as_params)


TECHNIQUE = ParameterAverage()
