"""Freezing parameters by regex rules over their paths, built on optax.

A parameter's path is its keys joined by '/', e.g.
``'encoder/layer_3/attention/query/kernel'``. A rule list is an ordered list of
``(regex, label)`` pairs with label ``'train'`` or ``'freeze'``. The first rule
whose regex matches the *whole* path (``re.fullmatch``) decides. Every parameter
must be matched by some rule; an unmatched one is an error, so a new parameter
never silently slips into the wrong group.

:func:`with_freezing` wraps an optimizer with ``optax.partition``: frozen
parameters go through ``optax.set_to_zero()`` and so hold no optimizer state,
and they stay bit-identical.

Example:
  >>> rules = preset('feature_extractor')  # [('encoder/.*', 'freeze'), ('.*', 'train')]
  >>> tx = with_freezing(optax.adamw(1e-3), params, rules)
  >>> state = tx.init(params)              # Adam moments for head + layer_mix only
  >>> count_trainable(params, rules)       # (trainable, total)
"""
import re
from typing import Any, Callable, List, Sequence, Tuple

import jax
import optax

from research.models.sizes import count_params

Rules = Sequence[Tuple[str, str]]
LABELS = ('train', 'freeze')
_MAX_LISTED = 20


def path_str(key_path) -> str:
  """Joins a jax key path (DictKey/SequenceKey/GetAttrKey...) with '/'.

  The ``.value`` attribute of flax metadata boxes (``nn.Partitioned``) is
  skipped, so boxed and unboxed params have the same paths.
  """
  parts = []
  for k in key_path:
    if isinstance(k, jax.tree_util.GetAttrKey) and k.name == 'value':
      continue
    for attr in ('key', 'idx', 'name'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def map_with_path(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  """``jax.tree.map`` whose ``fn(path, leaf)`` gets the '/'-joined path."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, leaf: fn(path_str(kp), leaf), tree)


def param_paths(params: Any) -> List[str]:
  """Returns the '/'-joined path of every leaf, in tree order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return [path_str(kp) for kp, _ in leaves]


def _compile(rules: Rules) -> List[Tuple[re.Pattern, str]]:
  compiled = []
  for i, rule in enumerate(rules):
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise ValueError(f'freeze rule #{i} {rule!r} must be a (regex, label) pair.')
    regex, label = rule
    if label not in LABELS:
      raise ValueError(f'freeze rule #{i} ({regex!r}, {label!r}): label must be '
                       f'one of {LABELS}.')
    try:
      compiled.append((re.compile(regex), label))
    except re.error as e:
      raise ValueError(f'freeze rule #{i}: bad regex {regex!r}: {e}') from None
  return compiled


def freeze_labels(params: Any, rules: Rules) -> Any:
  """Labels every parameter 'train' or 'freeze' by the first matching rule.

  Args:
    params: a params pytree (arrays or ``jax.ShapeDtypeStruct`` leaves).
    rules: ordered ``(regex, label)`` pairs; regexes must match the full path
      (``re.fullmatch``), so use ``'encoder/.*'``, not ``'encoder'``.
  Returns:
    A pytree of the same structure with string labels.
  Raises:
    ValueError: a bad rule, or parameters no rule matches (all listed).

  Example:
    >>> freeze_labels({'encoder': {'w': x}, 'head': {'w': y}},
    ...               [('encoder/.*', 'freeze'), ('head/.*', 'train')])
    {'encoder': {'w': 'freeze'}, 'head': {'w': 'train'}}
  """
  compiled = _compile(rules)
  unmatched = []

  def label(path, _):
    for regex, lab in compiled:
      if regex.fullmatch(path):
        return lab
    unmatched.append(path)
    return None

  labels = map_with_path(label, params)
  if unmatched:
    shown = unmatched[:_MAX_LISTED]
    more = len(unmatched) - len(shown)
    raise ValueError(
        f'{len(unmatched)} parameter(s) match no freeze rule (rules: '
        f'{[r for r, _ in rules]}); add a rule such as (".*", "train"). '
        f'Unmatched: {shown}' + (f' ... and {more} more' if more else ''))
  return labels


def with_freezing(optimizer: optax.GradientTransformation, params: Any,
                  rules: Rules) -> optax.GradientTransformation:
  """Wraps ``optimizer`` so parameters labelled 'freeze' are never updated.

  Args:
    optimizer: applied to the 'train' parameters only (it sees a tree in which
      frozen leaves are ``optax.MaskedNode``s; global-norm clipping inside it
      therefore measures trainable gradients only).
    params: the params pytree (or its ``jax.eval_shape``), to compute labels.
    rules: see :func:`freeze_labels`.
  Returns:
    An ``optax.partition`` transformation: frozen updates are exactly zero and
    frozen parameters hold no optimizer state.

  Example: ``with_freezing(optax.adamw(1e-4), params, bitfit())``.
  """
  labels = freeze_labels(params, rules)
  return optax.partition({'train': optimizer, 'freeze': optax.set_to_zero()},
                         labels)


def full_finetune() -> List[Tuple[str, str]]:
  """Everything trained."""
  return [('.*', 'train')]


def feature_extractor() -> List[Tuple[str, str]]:
  """The encoder frozen; the head and layer_mix (scalar mix) trained."""
  return [('encoder/.*', 'freeze'), ('.*', 'train')]


def frozen_embeddings() -> List[Tuple[str, str]]:
  """Embeddings (incl. ALBERT's projection) frozen; everything else trained."""
  return [('encoder/embeddings/.*', 'freeze'), ('.*', 'train')]


def freeze_bottom(k: int) -> List[Tuple[str, str]]:
  """Embeddings and ``layer_0 .. layer_{k-1}`` frozen; the rest trained.

  Args:
    k: number of bottom parameter sets frozen (0 = embeddings only). With
      cross-layer sharing (ALBERT) `layer_0` serves every layer, so k >= 1 freezes
      all of them.
  Returns:
    A rule list.
  """
  if not isinstance(k, int) or k < 0:
    raise ValueError(f'freeze_bottom: k must be a non-negative int, got {k!r}.')
  rules = [('encoder/embeddings/.*', 'freeze')]
  if k > 0:
    layers = '|'.join(str(i) for i in range(k))
    rules.append((f'encoder/layer_({layers})/.*', 'freeze'))
  return rules + [('.*', 'train')]


def bitfit() -> List[Tuple[str, str]]:
  """BitFit: in the encoder only bias terms (incl. LayerNorm biases) train;
  everything outside it (head, whatever its names, and layer_mix) trains."""
  return [('encoder/.*/bias', 'train'), ('encoder/.*', 'freeze'), ('.*', 'train')]


_PRESETS = {
    'full': full_finetune,
    'feature_extractor': feature_extractor,
    'frozen_embeddings': frozen_embeddings,
    'bitfit': bitfit,
}
VALID_PRESETS = tuple(_PRESETS) + ('bottom:<K>',)


def preset(name: str) -> List[Tuple[str, str]]:
  """Returns the rule list named ``name``.

  Args:
    name: 'full', 'feature_extractor', 'frozen_embeddings', 'bitfit' or
      'bottom:K' (see :func:`freeze_bottom`).
  Returns:
    A rule list for :func:`with_freezing`.

  Example: ``preset('bottom:2')`` freezes embeddings, layer_0 and layer_1.
  """
  if name in _PRESETS:
    return _PRESETS[name]()
  kind, sep, arg = name.partition(':')
  if sep and kind == 'bottom':
    try:
      k = int(arg)
    except ValueError:
      raise ValueError(f'freeze preset {name!r}: {arg!r} is not an integer.') from None
    return freeze_bottom(k)
  raise ValueError(f'Unknown freeze preset {name!r}. Valid presets: '
                   f'{", ".join(VALID_PRESETS)}.')


def count_trainable(params: Any, rules: Rules) -> Tuple[int, int]:
  """Returns ``(trainable, total)`` numbers of scalar parameters."""
  labels = jax.tree.leaves(freeze_labels(params, rules))
  sizes = [count_params(x) for x in jax.tree.leaves(params)]
  trainable = sum(s for s, lab in zip(sizes, labels) if lab == 'train')
  return trainable, sum(sizes)


