"""The one parser of the short text specs configs and flags use.

Configs name things in small strings so that a run's config.json records them:
'low_rank:64', 'fake_quant:8', 'bottom:3', 'last:4', 'tfds:lm1b:train' ('name:argument');
'0,2,4', 'sst2,mrpc' (lists); 'num_layers=4,hidden_size=256', 'task=sst2,runlocal'
(fields). Every such string is read here, so each reports a malformed value the same
way: naming what was being parsed, the text and what was expected.

    >>> name_arg('low_rank:64')
    ('low_rank', '64')
    >>> int_arg('bottom:3', 'freeze preset')
    3
    >>> items('0, 2,,4', int)
    [0, 2, 4]
    >>> fields('num_layers=4,causal=True')
    {'num_layers': 4, 'causal': True}
"""
from __future__ import annotations

import ast
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar('T')


def name_arg(spec: str) -> tuple[str, str]:
  """'name:argument' -> (name, argument); a bare 'name' has argument ''.

  Only the first ':' splits, so the argument may hold more ('tfds:lm1b:train' ->
  ('tfds', 'lm1b:train')).
  """
  name, _, argument = str(spec).strip().partition(':')
  return name.strip(), argument.strip()


def int_arg(spec: str, what: str, *, default: int | None = None) -> int:
  """The integer argument of 'name:<int>' (or `default` when it has none)."""
  name, argument = name_arg(spec)
  if not argument:
    if default is None:
      raise ValueError(f'{what} {spec!r}: {name!r} needs an integer argument '
                       f"('{name}:<int>')")
    return default
  try:
    return int(argument)
  except ValueError:
    raise ValueError(f"{what} {spec!r}: {argument!r} is not an integer ('{name}:<int>')"
                     ) from None


def items(text: str | Iterable[str], convert: Callable[[str], T] = str, *, sep: str = ',',
          what: str = 'list') -> list[T]:
  """'a, b,,c' -> ['a', 'b', 'c'], each converted; empty entries are skipped.

  A list or tuple (a config may hold one) is taken item by item.
  """
  parts = text if isinstance(text, (list, tuple)) else str(text).split(sep)
  out = []
  for part in parts:
    part = str(part).strip()
    if not part:
      continue
    try:
      out.append(convert(part))
    except (ValueError, TypeError):
      name = getattr(convert, '__name__', 'the expected type')
      raise ValueError(f'{what} {text!r}: {part!r} is not {_article(name)}') from None
  return out


def literal(text: str) -> Any:
  """A Python literal ('4', '0.1', 'True', '(1, 2)'), else the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def fields(text: str, *, known: Iterable[str] | None = None, sep: str = ',',
           convert: Callable[[str], Any] = literal, flags: bool = False,
           what: str = 'fields') -> dict[str, Any]:
  """'a=1,b=x' -> {'a': 1, 'b': 'x'}, values through `convert` (Python literals).

  Args:
    text: the spec.
    known: the allowed keys (None = any); an unknown key is an error listing them.
    sep: what separates the entries (',' or ' ').
    convert: value converter.
    flags: a bare key (no '=') means True ('runlocal'); otherwise it is an error.
    what: what is parsed, for error messages.
  """
  known = None if known is None else set(known)
  out: dict[str, Any] = {}
  for item in items(text, sep=sep, what=what):
    key, eq, value = item.partition('=')
    key = key.strip()
    if not eq and not flags:
      raise ValueError(f'{what} {text!r}: {item!r} is not <name>=<value>')
    if known is not None and key not in known:
      raise ValueError(f'{what} {text!r}: unknown name {key!r}; known: {sorted(known)}')
    if key in out:
      raise ValueError(f'{what} {text!r}: {key!r} is given twice')
    out[key] = convert(value.strip()) if eq else True
  return out


def _article(name: str) -> str:
  return f'an {name}' if name[:1] in 'aeiou' else f'a {name}'
