"""Site rules and the registry of what they name: shared by products, projections, hooks.

A model's config chooses what runs at each *site* (a module path such as
'encoder/layer_3/attention/query') with an ordered rule list
`((site_regex, spec), ...)`: the first regex that fully matches the site picks its spec,
and an unmatched site gets the registry's fallback. A spec is 'name' or
'name:argument' (`specs.name_arg`); a `Registry` maps each name to a factory
`factory(argument) -> thing`. `products.py`, `projections.py` and `hooks.py` each hold
one registry; specs are strings so a run's config.json records them.

Example:
  >>> shapes = Registry('shape', 'shapes', fallback='square')
  >>> shapes.register('square', lambda arg: 4)
  >>> shapes.register('polygon', lambda arg: int(arg))
  >>> shapes.spec_at((('a/.*', 'polygon:6'),), 'a/b'), shapes.spec_at((), 'a/b')
  ('polygon:6', 'square')
  >>> shapes.make('polygon:6')
  6
"""
from __future__ import annotations

import re
from typing import Callable, Generic, Sequence, TypeVar

from research import specs

T = TypeVar('T')
Rules = Sequence[tuple[str, str]]


class Registry(Generic[T]):
  """Named factories of one kind of thing, and the lookup of rules naming them.

  Attributes:
    what: what a spec names, for error messages ('product', 'projection kind').
    field: the config field holding the rules ('products'), for `check_rules`.
    fallback: the spec of a site no rule matches.
  """

  def __init__(self, what: str, field: str, fallback: str):
    self.what = what
    self.field = field
    self.fallback = fallback
    self._factories: dict[str, Callable[[str], T]] = {}
    self._made: dict[str, T] = {}

  def register(self, name: str, factory: Callable[[str], T]) -> None:
    """Makes `name` (and 'name:argument') usable in rules.

    Args:
      name: the spec's name; letters, digits and underscores.
      factory: `factory(argument) -> thing`; the argument is '' for a bare name.
    """
    if not re.fullmatch(r'\w+', name):
      raise ValueError(f'{self.what} name {name!r} must be letters, digits or underscores')
    self._factories[name] = factory
    self._made.clear()

  def names(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self._factories)

  def make(self, spec: str) -> T:
    """The thing `spec` names (cached, so equal specs give the identical object).

    Raises:
      ValueError: naming the spec and the registered names when its name is unknown,
        or the spec when its factory rejects the argument.
    """
    if spec not in self._made:
      name, argument = specs.name_arg(spec)
      if name not in self._factories:
        raise ValueError(f'unknown {self.what} {spec!r}; registered: {self.names()} '
                         f'(a module that defines a {self.what} registers it when imported)')
      try:
        self._made[spec] = self._factories[name](argument)
      except ValueError as e:
        raise ValueError(f'bad {self.what} spec {spec!r}: {e}') from e
    return self._made[spec]

  def spec_at(self, rules: Rules, site: str) -> str:
    """The spec of the first rule whose regex fully matches `site`, else the fallback."""
    for pattern, spec in rules:
      if re.fullmatch(pattern, site):
        return spec
    return self.fallback

  def check_rules(self, rules: Rules, field: str | None = None) -> list[str]:
    """`check_rules` of this registry's field (or `field`)."""
    return check_rules(rules, field or self.field)


def check_rules(rules: Rules, field: str) -> list[str]:
  """Problems with a rule list, for config validation.

  Args:
    rules: `((site_regex, spec), ...)`.
    field: the config field holding them, named in each message.

  Returns:
    One message per malformed pair or bad regex; empty when the rules are fine. Names
    are not checked here: a module may register its specs after the config is built.
  """
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
