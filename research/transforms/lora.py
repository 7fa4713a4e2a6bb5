"""LoRA (Hu et al., 2021) as a pure params transform.

:func:`add_lora` creates low-rank factors ``a`` ``[in, r]`` and ``b`` ``[r, out]``
for every kernel whose path matches a regex; :func:`merge_lora` returns
``W + (alpha / r) * a @ b``. ``b`` starts at zero, so merging the fresh factors
reproduces the base model exactly. Train only the LoRA tree by differentiating
``loss(merge_lora(base, lora, alpha))`` with respect to ``lora``; the base params
are then constants, so the optimizer state covers the factors only.

Kernels with more than two axes are flattened to ``[prod(in axes), prod(out axes)]``
with the input axes leading; by default (:func:`default_in_axes`) that is one
axis, except ``attention/out/kernel`` ``[heads, head_dim, hidden]`` whose input
is ``heads x head_dim`` (the layout of research/models/encoder.py).

Example:
  >>> base, lora = add_lora(params, rank=8,
  ...                       targets_regex='.*attention/(query|value)/kernel',
  ...                       rng=jax.random.PRNGKey(0))
  >>> merged = merge_lora(base, lora, alpha=16.0)   # == base at init
"""
import math
import re
from typing import Any, Callable, Dict, Tuple, Union

import jax
import jax.numpy as jnp

from research.transforms.freeze import map_with_path, param_paths, path_str


def _set(tree: Dict[str, Any], path: str, value: Any) -> None:
  *parents, last = path.split('/')
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[last] = value


def default_in_axes(path: str, shape: Tuple[int, ...]) -> int:
  """Number of leading input axes of a kernel: all but the last for the
  attention output projection, else 1."""
  return len(shape) - 1 if path.endswith('attention/out/kernel') else 1


def add_lora(params: Any, rank: int, targets_regex: str, rng: jax.Array,
             num_in_axes: Union[int, Callable[[str, Tuple[int, ...]], int]] = default_in_axes,
             ) -> Tuple[Any, Dict[str, Any]]:
  """Creates LoRA factors for the kernels whose path matches ``targets_regex``.

  Args:
    params: params pytree with '/'-joinable keys.
    rank: LoRA rank r >= 1 (at most the kernel's smaller side).
    targets_regex: ``re.fullmatch`` over paths, e.g. '.*attention/.*/kernel'.
    rng: PRNG key for ``a`` (normal with std 1/sqrt(in)); ``b`` is zeros.
    num_in_axes: leading input axes of each kernel, an int or
      ``fn(path, shape) -> int`` (default :func:`default_in_axes`).
  Returns:
    ``(base_params, lora_params)``: the params unchanged, and a nested dict
    mirroring the targeted paths, each leaf replaced by ``{'a': .., 'b': ..}``
    in float32.
  Raises:
    ValueError: bad rank, no parameter matched, or a matched leaf under 2-D.
  """
  if not isinstance(rank, int) or rank < 1:
    raise ValueError(f'add_lora: rank must be an int >= 1, got {rank!r}.')
  regex = re.compile(targets_regex)
  leaves = {p: x for p, x in zip(param_paths(params), jax.tree.leaves(params))}
  targets = [p for p in leaves if regex.fullmatch(p)]
  if not targets:
    raise ValueError(f'add_lora: no parameter path matches {targets_regex!r}; '
                     f'e.g. {list(leaves)[:5]}.')
  lora: Dict[str, Any] = {}
  for path, key in zip(targets, jax.random.split(rng, len(targets))):
    shape = jnp.shape(leaves[path])
    if len(shape) < 2:
      raise ValueError(f'add_lora: {path!r} has shape {shape}; LoRA needs a '
                       'kernel with at least 2 axes (did the regex catch a bias?).')
    k = num_in_axes(path, shape) if callable(num_in_axes) else num_in_axes
    if not 1 <= k < len(shape):
      raise ValueError(f'add_lora: num_in_axes={k} invalid for {path!r} of shape {shape}.')
    fan_in, fan_out = math.prod(shape[:k]), math.prod(shape[k:])
    if rank > min(fan_in, fan_out):
      raise ValueError(f'add_lora: rank {rank} exceeds min{(fan_in, fan_out)} '
                       f'of {path!r}.')
    a = jax.random.normal(key, (fan_in, rank), jnp.float32) / math.sqrt(fan_in)
    _set(lora, path, {'a': a, 'b': jnp.zeros((rank, fan_out), jnp.float32)})
  return params, lora


def merge_lora(base: Any, lora: Dict[str, Any], alpha: float) -> Any:
  """Returns ``base`` with ``(alpha / r) * a @ b`` added to each targeted kernel.

  Args:
    base: params pytree.
    lora: factors from :func:`add_lora` (possibly trained).
    alpha: LoRA scaling numerator; the update is scaled by ``alpha / rank``.
  Returns:
    A new params pytree of the same structure and dtypes as ``base``.
  Raises:
    ValueError: a LoRA entry whose path is not in ``base``.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(lora)
  factors: Dict[str, Dict[str, jax.Array]] = {}
  for kp, x in flat:
    *parent, name = path_str(kp).split('/')
    factors.setdefault('/'.join(parent), {})[name] = x
  missing = sorted(set(factors) - set(param_paths(base)))
  if missing:
    raise ValueError(f'merge_lora: LoRA paths not found in base params: {missing}.')

  def merge(path, w):
    if path not in factors:
      return w
    a, b = factors[path]['a'], factors[path]['b']
    delta = (alpha / a.shape[1]) * (a @ b)
    return (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype)
  return map_with_path(merge, base)
