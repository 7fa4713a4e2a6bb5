"""Which arithmetic computes each non-linearity: softmax, the FFN activation, LayerNorm.

Products (`products.py`) choose how each matrix multiply runs and hooks (`hooks.py`) act
on the tensors between them; this seam chooses the functions themselves, so an
integer-only model (I-BERT: integer GELU, exponential and square root;
`research/transforms/integer_only.py`) runs the same encoder with other arithmetic.
Each non-linearity has a site:

    <layer>/attention/softmax         the attention softmax (scaled scores + mask)
    <layer>/mlp/activation            the FFN activation
    <layer>/attention_norm, <layer>/output_norm, embeddings/layer_norm, final_norm
                                      each LayerNorm (its module's path)

`EncoderConfig.nonlinear` is an ordered rule list `((site_regex, spec), ...)` as for
products (`rules.py`); unmatched sites use 'default' (float32, as without rules). A spec
names a *family* (`Nonlinear`) and the site decides which of its functions runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from research.models.rules import Registry, Rules

Array = jax.Array


def gelu(x: Array) -> Array:
  # Exact GELU written with erf (jax.nn.gelu uses an erfc form). On XLA:CPU the two
  # timed within noise of each other (benchmarks/encoder_layer_ops_cpu.py), while the
  # erfc form's HLO computed the bias add twice. Results agree to float32 rounding.
  return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


ACTIVATIONS = {
    'gelu': gelu,
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'relu': jax.nn.relu,
}


def activation(name: str):
  """The float activation function called `name` (see config.ACTIVATIONS)."""
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; known: {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


class Nonlinear:
  """A family of non-linearities; the default computes them in float32."""

  def softmax(self, scores: Array, bias: Array) -> Array:
    """softmax(scores + bias) over the last axis; bias is the additive padding (or
    causal) mask, a large negative number at keys a query may not see."""
    return jax.nn.softmax(scores + bias, axis=-1)

  def activation(self, name: str, x: Array) -> Array:
    return activation(name)(x)

  def layer_norm(self, x: Array, scale: Array, bias: Array, eps: float) -> Array:
    """LayerNorm over the last axis in float32 (bf16 statistics lose parity)."""
    y = x.astype(jnp.float32)
    mean = y.mean(-1, keepdims=True)
    var = jnp.square(y - mean).mean(-1, keepdims=True)
    return (y - mean) * jax.lax.rsqrt(var + eps) * scale + bias


DEFAULT = Nonlinear()
NONLINEAR: Registry[Nonlinear] = Registry('non-linearity family', 'nonlinear',
                                          fallback='default')
NONLINEAR.register('default', lambda arg: DEFAULT)
register = NONLINEAR.register  # register(name, factory): factory(argument) -> Nonlinear
spec_at = NONLINEAR.spec_at


def at(rules: Rules, site: str) -> Nonlinear:
  """The family that computes the non-linearity at `site` (the default without rules)."""
  return NONLINEAR.make(spec_at(rules, site)) if rules else DEFAULT
