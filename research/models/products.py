"""The one injection point for matrix products: which function multiplies at each site.

Every matrix product of the encoder and its heads goes through a *product*, a function

    product(spec, lhs, rhs, *, bias=None, out_dtype=None) -> array

with the signature of `mixed_matmul.einsum` (a two-operand einsum plus an optional bias
added before the one cast to `out_dtype`). Each product has a *site*: the path of the
module that runs it, e.g. 'encoder/layer_3/attention/query' for a projection or
'encoder/layer_3/attention/scores' / '.../context' for the two attention products.
`EncoderConfig.products` is an ordered rule list `((site_regex, product_spec), ...)`;
the first regex that fully matches a site picks its product, and unmatched sites use
'default' (`mixed_matmul.einsum`: plain float, or bf16 inputs with float32
accumulation). So projections and attention products can be treated differently:

    config.replace(products=(('.*/attention/(scores|context)', 'default'),
                             ('.*', 'fake_quant:8')))

A product spec is 'name' or 'name:argument'. `register(name, factory)` adds a name;
`factory(argument)` returns the product (quantization registers its products this
way). Specs are strings so a run's config.json records how it multiplies. Rules and
registry are a `rules.Registry`, as for projections and hooks.

Example:
  >>> register('twice', lambda arg: lambda spec, a, b, **kw: 2 * default(spec, a, b, **kw))
  >>> product_at((('.*/mlp/.*', 'twice'),), 'encoder/layer_0/mlp/output') is not default
  True
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import jax

from research.models import mixed_matmul
from research.models.rules import Registry, Rules

Product = Callable[..., jax.Array]


def default(spec: str, lhs: jax.Array, rhs: jax.Array, *, bias: jax.Array | None = None,
            out_dtype=None) -> jax.Array:
  """`mixed_matmul.einsum`: the product every site uses unless a rule says otherwise."""
  return mixed_matmul.einsum(spec, lhs, rhs, bias=bias, out_dtype=out_dtype)


PRODUCTS: Registry[Product] = Registry('product', 'products', fallback='default')
PRODUCTS.register('default', lambda arg: default)
# The registry's methods under the names other modules use.
register = PRODUCTS.register  # register(name, factory): factory(argument) -> product
make = PRODUCTS.make  # make(spec) -> product (cached)
spec_at = PRODUCTS.spec_at  # spec_at(rules, site) -> spec; unmatched sites get 'default'


_RECORDERS: list[list[tuple[str, str]]] = []


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, str]]]:
  """Collects the (site, spec) of every product resolved while tracing a model.

  Which sites exist is easiest to see this way (the sites of a fresh trace, e.g. under
  `jax.eval_shape(model.init, ...)`; a cached jit does not trace again):

    with products.recording() as sites:
      jax.eval_shape(Encoder(config).init, rng, ids)
  """
  sites: list[tuple[str, str]] = []
  _RECORDERS.append(sites)
  try:
    yield sites
  finally:
    _RECORDERS.remove(sites)


def product_at(rules: Rules, site: str) -> Product:
  """The product that runs at `site` under `rules`."""
  spec = spec_at(rules, site)
  for sites in _RECORDERS:
    sites.append((site, spec))
  return make(spec)
