"""Building blocks the encoder's modules share: LayerNorm, projections and hooks at a
module's sites (activations and the other non-linearities: `nonlinear.py`).

`projection(parent, cfg, name, ...)` makes the projection module of the kind the config's
rules pick for `parent`'s path + name (`projections.py`); `hook(parent, name, x)` passes an
activation through the hook of that site (`hooks.py`; the identity without rules).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import hooks, nonlinear, projections
from research.models.projections import logical_param  # pylint: disable=unused-import
from research.models.config import EncoderConfig

Array = jax.Array


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
  """LayerNorm computed in float32 (bf16 statistics lose parity), cast back; `rules`
  (`EncoderConfig.nonlinear`) may pick other arithmetic for this module's site."""
  eps: float
  param_dtype: Any = jnp.float32
  dtype: Any = None  # output dtype; None = the input's
  rules: tuple[tuple[str, str], ...] = ()

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = logical_param(self, 'scale', (features,), ('embed',), nn.initializers.ones,
                   self.param_dtype)
    bias = logical_param(self, 'bias', (features,), ('embed',), nn.initializers.zeros,
                  self.param_dtype)
    family = nonlinear.at(self.rules, '/'.join(str(p) for p in self.scope.path))
    return family.layer_norm(x, scale, bias, self.eps).astype(self.dtype or x.dtype)
