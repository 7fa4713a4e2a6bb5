"""The rule registry shared by products, projections and hooks (research/models/rules.py)."""
from __future__ import annotations

import pytest

from research.models import hooks, products, projections
from research.models.rules import Registry, check_rules


def _registry():
  shapes = Registry('shape', 'shapes', fallback='square')
  shapes.register('square', lambda arg: ('square', 4))
  shapes.register('polygon', lambda arg: ('polygon', int(arg)))
  return shapes


def test_register_and_make_with_argument_cached():
  shapes = _registry()
  assert shapes.make('polygon:6') == ('polygon', 6)
  assert shapes.make('polygon:6') is shapes.make('polygon:6')  # equal specs, one object
  assert shapes.make('square') == ('square', 4)
  assert shapes.names() == ['polygon', 'square']
  shapes.register('polygon', lambda arg: ('polygon', -int(arg)))  # re-registering drops
  assert shapes.make('polygon:6') == ('polygon', -6)              # what was made before
  with pytest.raises(ValueError, match='letters, digits or underscores'):
    shapes.register('two words', lambda arg: None)


def test_first_full_match_wins_else_fallback():
  shapes = _registry()
  rules = (('a/.*/x', 'polygon:3'), ('a/.*', 'polygon:5'), ('b', 'polygon:7'))
  assert shapes.spec_at(rules, 'a/b/x') == 'polygon:3'  # the first match, not the last
  assert shapes.spec_at(rules, 'a/b/y') == 'polygon:5'
  assert shapes.spec_at(rules, 'bb') == 'square'  # 'b' matches only part of 'bb'
  assert shapes.spec_at((), 'a') == 'square'


def test_unknown_spec_names_it_and_the_registered_names():
  shapes = _registry()
  with pytest.raises(ValueError, match=r"unknown shape 'circle:2'; registered: "
                                       r"\['polygon', 'square'\]"):
    shapes.make('circle:2')
  with pytest.raises(ValueError, match=r"bad shape spec 'polygon:x'"):
    shapes.make('polygon:x')


def test_check_rules_reports_bad_regex_and_malformed_pairs():
  assert check_rules((('.*', 'a'),), 'products') == []
  errors = check_rules((('(', 'a'), ('.*',), ('.*', 3)), 'hooks')
  assert len(errors) == 3
  assert errors[0].startswith("hooks rule '(' is not a valid regex")
  assert 'not a (regex, spec) pair' in errors[1] and 'not a (regex, spec) pair' in errors[2]
  assert _registry().check_rules((('[', 'a'),))[0].startswith("shapes rule '['")


def test_products_hooks_and_projections_are_registries():
  assert products.spec_at((), 'layer_0/attention/scores') == 'default'
  assert products.make('default') is products.default
  assert hooks.spec_at((), 'layer_0/mlp/gelu_in') == 'identity'
  assert projections.kind_at((), 'layer_0/mlp/output') == 'dense'
  assert projections.kind_class('low_rank:4') is projections.LowRank
  with pytest.raises(ValueError, match="unknown product 'nope'; registered: .*'default'"):
    products.make('nope')
  with pytest.raises(ValueError, match="^x/y: unknown projection kind 'nope'; registered"):
    projections.make((('.*', 'nope'),), 'x/y', name='y', spec='bi,io->bo',
                     kernel_shape=(2, 2), kernel_axes=('embed', 'mlp'))
