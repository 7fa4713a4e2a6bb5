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
way). Specs are strings so a run's config.json records how it multiplies.

Example:
  >>> register('twice', lambda arg: lambda spec, a, b, **kw: 2 * default(spec, a, b, **kw))
  >>> product_at((('.*/mlp/.*', 'twice'),), 'encoder/layer_0/mlp/output') is not default
  True
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Callable, Iterator, Sequence

import jax

from research.models import mixed_matmul

Product = Callable[..., jax.Array]
Rules = Sequence[tuple[str, str]]


def default(spec: str, lhs: jax.Array, rhs: jax.Array, *, bias: jax.Array | None = None,
            out_dtype=None) -> jax.Array:
  """`mixed_matmul.einsum`: the product every site uses unless a rule says otherwise."""
  return mixed_matmul.einsum(spec, lhs, rhs, bias=bias, out_dtype=out_dtype)


_FACTORIES: dict[str, Callable[[str], Product]] = {'default': lambda arg: default}


def register(name: str, factory: Callable[[str], Product]) -> None:
  """Makes `name` (and 'name:argument') usable in `EncoderConfig.products`.

  Args:
    name: the spec's name; letters, digits and underscores.
    factory: `factory(argument) -> product`; the argument is '' for a bare name.
  """
  if not re.fullmatch(r'\w+', name):
    raise ValueError(f'product name {name!r} must be letters, digits or underscores')
  _FACTORIES[name] = factory
  make.cache_clear()


@functools.lru_cache(maxsize=None)
def make(spec: str) -> Product:
  """The product a spec names (cached, so equal specs give the identical function)."""
  name, _, argument = spec.partition(':')
  if name not in _FACTORIES:
    raise ValueError(f'Unknown product {spec!r}; registered: {sorted(_FACTORIES)} '
                     '(a module that defines a product registers it when imported)')
  return _FACTORIES[name](argument)


def first_match(rules: Rules, site: str, default: str) -> str:
  """The spec of the first rule whose regex fully matches `site`, else `default` (the
  lookup shared by product, projection and hook rules)."""
  for pattern, spec in rules:
    if re.fullmatch(pattern, site):
      return spec
  return default


def spec_at(rules: Rules, site: str) -> str:
  """The product spec of `site`: the first rule whose regex fully matches, else 'default'."""
  return first_match(rules, site, 'default')


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


def check_rules(rules: Rules, field: str = 'products') -> list[str]:
  """Problems with a rule list (bad regexes, malformed pairs), for config validation."""
  errors = []
  for rule in rules:
    if len(rule) != 2 or not all(isinstance(part, str) for part in rule):
      errors.append(f'{field} rule {rule!r} is not a (regex, spec) pair of strings')
      continue
    try:
      re.compile(rule[0])
    except re.error as e:
      errors.append(f'{field} rule {rule[0]!r} is not a valid regex: {e}')
  return errors
