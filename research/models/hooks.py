"""Named activation points: where a transform may act on a tensor that is not a product.

Products (`products.py`) cover every matrix multiply; some techniques also act between
them — fully quantized BERT fake-quantizes the softmax input and output, the GELU input
and output, the LayerNorm inputs and outputs and the embedding output. Each such point
is a *hook site*: the path of the module plus a name,

    <embeddings>/<table>/table                an embedding table, before the lookup
    <embeddings>/output                       after the embedding LayerNorm
    <layer>/attention/softmax_in, softmax_out the scaled scores (before the padding mask)
                                              and the attention probabilities
    <layer>/mlp/gelu_in, gelu_out             the activation's input and output
    <layer>/attention_norm/input, output      each LayerNorm's input and output
    <layer>/output_norm/input, output         (and final_norm for pre-LN models)

`EncoderConfig.hooks` is an ordered rule list `((site_regex, hook_spec), ...)` as for
products (`rules.py`); unmatched sites use 'identity' (the tensor unchanged, so a model
without rules traces exactly as before). A hook is `hook(x) -> x` with x's shape and
dtype; `register(name, factory)` adds one (quantization registers 'fake_quant').
"""
from __future__ import annotations

from typing import Callable

import jax

from research.models.rules import Registry, Rules

Hook = Callable[[jax.Array], jax.Array]


def identity(x: jax.Array) -> jax.Array:
  return x


HOOKS: Registry[Hook] = Registry('hook', 'hooks', fallback='identity')
HOOKS.register('identity', lambda arg: identity)
# The registry's methods under the names other modules use.
register = HOOKS.register  # register(name, factory): factory(argument) -> hook
spec_at = HOOKS.spec_at  # spec_at(rules, site) -> spec; unmatched sites get 'identity'


def apply(rules: Rules, site: str, x: jax.Array) -> jax.Array:
  """x through the hook of `site` (no op at all when no rule matches)."""
  if not rules:
    return x
  spec = spec_at(rules, site)
  return x if spec == HOOKS.fallback else HOOKS.make(spec)(x)
