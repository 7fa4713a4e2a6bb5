"""Building blocks the encoder's modules share: activations, LayerNorm, projections and
hooks at a module's sites.

`projection(parent, cfg, name, ...)` makes the projection module of the kind the config's
rules pick for `parent`'s path + name (`projections.py`); `hook(parent, name, x)` passes an
activation through the hook of that site (`hooks.py`; the identity without rules).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import hooks, projections
from research.models.projections import logical_param  # pylint: disable=unused-import
from research.models.config import EncoderConfig

Array = jax.Array


def activation(name: str):
  """The activation function called `name` (see config.ACTIVATIONS)."""
  if name == 'gelu':
    # Exact GELU written with erf (jax.nn.gelu uses an erfc form). On XLA:CPU the two
    # timed within noise of each other (benchmarks/encoder_layer_ops_cpu.py), while the
    # erfc form's HLO computed the bias add twice. Results agree to float32 rounding.
    return lambda x: x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))
  if name == 'gelu_tanh':
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == 'relu':
    return jax.nn.relu
  raise ValueError(f'Unknown activation {name!r}')


def projection(parent: nn.Module, cfg: EncoderConfig, name: str, spec: str,
               kernel_shape: tuple[int, ...], kernel_axes: tuple[str, ...],
               out_dtype=None) -> projections.Projection:
  """The projection module `name` of `parent`, of the kind `cfg.projections` picks."""
  return projections.make(
      cfg.projections, projections.site_of(parent, name), name=name, spec=spec,
      kernel_shape=kernel_shape, kernel_axes=kernel_axes, products=cfg.products,
      dtype=cfg.compute_dtype, out_dtype=out_dtype, param_dtype=cfg.params_dtype)


def hook(parent: nn.Module, name: str, x: Array) -> Array:
  """x through the hook at `parent`'s path + name (`hooks.py`; identity by default)."""
  rules = parent.config.hooks
  return hooks.apply(rules, projections.site_of(parent, name), x) if rules else x


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (bf16 statistics lose parity), cast back."""
  eps: float
  param_dtype: Any = jnp.float32
  dtype: Any = None  # output dtype; None = the input's

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = logical_param(self, 'scale', (features,), ('embed',), nn.initializers.ones,
                   self.param_dtype)
    bias = logical_param(self, 'bias', (features,), ('embed',), nn.initializers.zeros,
                  self.param_dtype)
    y = x.astype(jnp.float32)
    mean = y.mean(-1, keepdims=True)
    var = jnp.square(y - mean).mean(-1, keepdims=True)
    y = (y - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale + bias).astype(self.dtype or x.dtype)
