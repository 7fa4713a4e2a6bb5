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
products; unmatched sites use 'identity' (the tensor unchanged, so a model without
rules traces exactly as before). A hook is `hook(x) -> x` with x's shape and dtype;
`register(name, factory)` adds one (quantization registers 'fake_quant').
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Sequence

import jax

from research.models import products

Hook = Callable[[jax.Array], jax.Array]
Rules = Sequence[tuple[str, str]]


def identity(x: jax.Array) -> jax.Array:
  return x


_FACTORIES: dict[str, Callable[[str], Hook]] = {'identity': lambda arg: identity}


def register(name: str, factory: Callable[[str], Hook]) -> None:
  """Makes `name` (and 'name:argument') usable in `EncoderConfig.hooks`."""
  if not re.fullmatch(r'\w+', name):
    raise ValueError(f'hook name {name!r} must be letters, digits or underscores')
  _FACTORIES[name] = factory
  make.cache_clear()


@functools.lru_cache(maxsize=None)
def make(spec: str) -> Hook:
  name, _, argument = spec.partition(':')
  if name not in _FACTORIES:
    raise ValueError(f'Unknown hook {spec!r}; registered: {sorted(_FACTORIES)} '
                     '(a module that defines a hook registers it when imported)')
  return _FACTORIES[name](argument)


def spec_at(rules: Rules, site: str) -> str:
  """The hook spec of `site`: the first rule whose regex fully matches, else 'identity'."""
  return products.first_match(rules, site, 'identity')


def apply(rules: Rules, site: str, x: jax.Array) -> jax.Array:
  """x through the hook of `site` (no op at all when no rule matches)."""
  if not rules:
    return x
  spec = spec_at(rules, site)
  return x if spec == 'identity' else make(spec)(x)
