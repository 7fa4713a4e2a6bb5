"""Unstructured pruning during training: gradual magnitude and movement pruning.

:func:`with_pruning` wraps an optimizer. After the inner optimizer's update it zeroes
the pruned weights of the *new* params (``params + updates``), so with any optimizer
(Adam moments, decoupled weight decay, clipping) a pruned weight is exactly 0.0 after
every step. The masks, the step count and the movement scores live in the optimizer
state, so they are checkpointed and a resumed run prunes exactly as an uninterrupted one.

* Schedule (Zhu & Gupta 2017, "To prune, or not to prune"): the target sparsity rises
  from ``initial`` to ``final`` as ``final + (initial - final) (1 - progress)**3`` between
  ``begin_step`` and ``end_step``; masks are recomputed every ``frequency`` steps of that
  span and at ``end_step``, then fixed.
* Criterion 'magnitude': keep the largest ``|w|`` (of the new params).
* Criterion 'movement' (Sanh et al. 2020, hard movement pruning): scores
  ``S += -grad * w`` accumulate every step; keep the highest scores, i.e. prune the
  weights that move towards zero. Unlike the paper, a pruned weight here is really 0,
  so its score stops changing (``-grad * 0``); it can come back, at 0, only if the
  scores of kept weights fall below it. The paper's score learning rate is 1.
* Threshold scope 'layer' (default, as both papers): each site (kernel) is pruned to
  the target on its own; 'global': one threshold over all sites together. Exactly
  ``floor(s * n)`` weights are pruned (ties broken by position), so the achieved
  sparsity is the target within one weight per site ('layer') or overall ('global').

Sites: the leaves whose '/'-joined path fully matches ``sites`` (see
``research.transforms.freeze``); by default the dense kernels of the encoder's attention
and MLP projections, not embeddings, LayerNorms, biases, the pooler or the head. Placed
inside ``freeze.with_freezing`` (as the trainer does), frozen params are never pruned.

Memory: one bool mask per site weight, plus a float32 score with 'movement'.

Speed: masks make no model faster here. XLA:CPU (and this codebase) has no sparse
kernel, so a 90 %-sparse kernel costs as much time as a dense one; only storage
shrinks (:func:`storage_bytes`). For speed use structural pruning.

Example:
  >>> schedule = polynomial_schedule(0.0, 0.9, begin_step=100, end_step=1000)
  >>> tx = with_pruning(optax.adamw(1e-4), schedule, begin_step=100, end_step=1000,
  ...                   frequency=50)
  >>> state = tx.init(params)
  >>> updates, state = tx.update(grads, state, params)  # params + updates: 0 if pruned
"""
from __future__ import annotations

import io
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.transforms.freeze import map_with_path, path_str
from research.transforms.technique import Technique

METHODS = ('magnitude', 'movement')
SCOPES = ('layer', 'global')
# Dense kernels of the encoder's projections, with or without the task model's prefix.
DEFAULT_SITES = (r'(encoder/)?layer_\d+/(attention/(query|key|value|out)'
                 r'|mlp/(intermediate|output))/kernel')

_masked = lambda x: isinstance(x, optax.MaskedNode)


def polynomial_sparsity(step, initial: float, final: float, begin_step: int,
                        end_step: int, power: float = 3) -> jax.Array:
  """Zhu & Gupta's sparsity at ``step``: ``initial`` before begin, ``final`` after end.

  Args:
    step: the step (int or traced scalar).
    initial, final: sparsities in [0, 1).
    begin_step, end_step: the span over which sparsity rises (``begin <= end``;
      equal means one jump to ``final`` at ``end_step``).
    power: 3 in the paper (fast pruning early, slow near the end).
  Returns:
    A float32 scalar.

  Example: ``polynomial_sparsity(550, 0.0, 0.8, 100, 1000)`` is ``0.8 * (1 - 0.5**3)``.
  """
  span = max(end_step - begin_step, 1)
  progress = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / span, 0.0, 1.0)
  if end_step == begin_step:
    progress = jnp.where(jnp.asarray(step) >= end_step, 1.0, 0.0)
  return final + (initial - final) * (1.0 - progress) ** power


def polynomial_schedule(initial: float, final: float, begin_step: int, end_step: int,
                        power: float = 3) -> Callable[[Any], jax.Array]:
  """:func:`polynomial_sparsity` as a ``step -> sparsity`` schedule.

  Args: as :func:`polynomial_sparsity`.
  Returns:
    A callable ``step -> float32 scalar``.
  Raises:
    ValueError: a sparsity outside [0, 1), a negative begin_step or begin after end.
  """
  _check_range('initial', initial)
  _check_range('final', final)
  _check_steps(begin_step, end_step)
  return lambda step: polynomial_sparsity(step, initial, final, begin_step, end_step, power)


def _check_range(name: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f'pruning: {name} sparsity must be in [0, 1), got {value!r}.')


def _check_steps(begin_step: int, end_step: int) -> None:
  if begin_step < 0 or begin_step > end_step:
    raise ValueError(f'pruning: need 0 <= begin_step <= end_step, got begin_step='
                     f'{begin_step}, end_step={end_step} (begin after end?).')


def site_tree(params: Any, sites: str = DEFAULT_SITES) -> Any:
  """A bool tree: True where the full path matches ``sites``.

  Args:
    params: a params pytree; ``optax.MaskedNode`` leaves (frozen params inside
      ``optax.partition``) are never sites.
    sites: regex over '/'-joined paths (``re.fullmatch``).
  Returns:
    The same structure with Python bools.
  Raises:
    ValueError: a bad regex, or one that matches no parameter (paths listed).
  """
  try:
    regex = re.compile(sites)
  except re.error as e:
    raise ValueError(f'pruning: bad sites regex {sites!r}: {e}') from None
  tree = map_with_path(lambda path, _: bool(regex.fullmatch(path)), params)
  if not any(jax.tree.leaves(tree)):
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    shown = [path_str(kp) for kp, _ in leaves][:10]
    raise ValueError(f'pruning: sites regex {sites!r} matches no (trainable) parameter; '
                     f'paths look like {shown}.')
  return tree


def _rank_mask(score: jax.Array, sparsity: jax.Array) -> jax.Array:
  """True for all but the ``floor(sparsity * n)`` lowest scores (ties by position)."""
  flat = score.reshape(-1)
  n = flat.shape[0]
  k = jnp.floor(sparsity * n).astype(jnp.int32)
  ranks = jnp.zeros(n, jnp.int32).at[jnp.argsort(flat, stable=True)].set(
      jnp.arange(n, dtype=jnp.int32))
  return (ranks >= k).reshape(score.shape)


def _masks_from_scores(scores: list, sparsity: jax.Array, scope: str) -> list:
  if scope == 'layer':
    return [_rank_mask(s, sparsity) for s in scores]
  flat = _rank_mask(jnp.concatenate([s.reshape(-1) for s in scores]), sparsity)
  offsets = np.cumsum([0] + [s.size for s in scores])
  return [flat[a:b].reshape(s.shape) for a, b, s in zip(offsets[:-1], offsets[1:], scores)]


class PruningState(NamedTuple):
  count: jax.Array  # updates applied so far
  masks: Any        # bool per site (True = kept); MaskedNode elsewhere
  scores: Any       # movement: accumulated -grad * w per site; else EmptyState
  inner: optax.OptState


def with_pruning(optimizer: optax.GradientTransformation,
                 schedule: Callable[[Any], jax.Array], *, begin_step: int, end_step: int,
                 frequency: int = 1, sites: str = DEFAULT_SITES, method: str = 'magnitude',
                 scope: str = 'layer') -> optax.GradientTransformation:
  """Wraps ``optimizer`` so that the weights at ``sites`` are pruned on a schedule.

  Args:
    optimizer: the inner optimizer (it sees every gradient; pruned weights are reset to
      exactly 0 after its update, so its moments and weight decay never revive them).
    schedule: ``step -> target sparsity`` (e.g. :func:`polynomial_schedule`); steps count
      from 1 (the first update is step 1, as the trainer's).
    begin_step, end_step: masks are recomputed at steps ``begin_step + i * frequency``
      up to ``end_step`` and at ``end_step``; fixed afterwards (all kept before).
    frequency: steps between mask updates (>= 1).
    sites: regex over '/'-joined param paths (full match) of the weights to prune.
    method: 'magnitude' or 'movement' (see the module docstring).
    scope: 'layer' (a threshold per site) or 'global' (one over all sites).
  Returns:
    An optax GradientTransformation with :class:`PruningState`; its ``update`` needs
    ``params``.
  Raises:
    ValueError: unknown method or scope, bad steps or frequency; at ``init``, a sites
      regex that matches no parameter.
  """
  if method not in METHODS:
    raise ValueError(f'pruning: unknown method {method!r}; valid: {METHODS}.')
  if scope not in SCOPES:
    raise ValueError(f'pruning: unknown scope {scope!r}; valid: {SCOPES}.')
  _check_steps(begin_step, end_step)
  if not isinstance(frequency, int) or frequency < 1:
    raise ValueError(f'pruning: frequency must be an int >= 1, got {frequency!r}.')

  def over_sites(fn, masks, *trees):  # fn(mask, *leaves) at sites; others: trees[0]'s
    return jax.tree.map(lambda m, x, *rest: x if _masked(m) else fn(m, x, *rest),
                        masks, *trees, is_leaf=_masked)

  def sites_only(fn, masks, *trees):  # fn(mask, *leaves) at sites; MaskedNode elsewhere
    return jax.tree.map(lambda m, *xs: m if _masked(m) else fn(m, *xs),
                        masks, *trees, is_leaf=_masked)

  def init(params):
    is_site = site_tree(params, sites)
    masks = jax.tree.map(lambda s, p: jnp.ones(p.shape, bool) if s else optax.MaskedNode(),
                         is_site, params)
    scores = (sites_only(lambda m, p: jnp.zeros(p.shape, jnp.float32), masks, params)
              if method == 'movement' else optax.EmptyState())
    return PruningState(jnp.zeros([], jnp.int32), masks, scores, optimizer.init(params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError('pruning: update needs params (call tx.update(grads, state, params)).')
    updates, inner = optimizer.update(grads, state.inner, params)
    step = state.count + 1
    scores = state.scores
    if method == 'movement':  # a pruned weight is 0, so its score stays where it was
      scores = sites_only(lambda m, s, g, p: s - (g * p).astype(jnp.float32),
                          state.masks, scores, grads, params)

    def recompute():
      if method == 'movement':
        criterion = scores
      else:  # |new params|, pruned ones 0 (they stay pruned: sparsity only grows)
        criterion = sites_only(
            lambda m, p, u: jnp.where(m, jnp.abs(p + u), 0.0).astype(jnp.float32),
            state.masks, params, updates)
      leaves, treedef = jax.tree.flatten(criterion)
      return jax.tree.unflatten(treedef, _masks_from_scores(leaves, schedule(step), scope))

    due = (step >= begin_step) & (step <= end_step) & (
        ((step - begin_step) % frequency == 0) | (step == end_step))
    masks = jax.lax.cond(due, recompute, lambda: state.masks)
    # p + (-p) is exactly 0, so a pruned weight is 0.0 whatever the inner update was.
    pruned = over_sites(lambda m, u, p: jnp.where(m, u, -p), masks, updates, params)
    return pruned, PruningState(optax.safe_increment(state.count), masks, scores, inner)

  return optax.GradientTransformation(init, update)


def from_config(config: Any, optimizer: optax.GradientTransformation,
                total_steps: int) -> optax.GradientTransformation:
  """``with_pruning`` from the trainer's ``config.sparsity`` block.

  Args:
    config: ConfigDict or dict with target (final sparsity in [0, 1); 0 = off), method,
      begin and end (fractions of training in [0, 1]), frequency (steps), sites (regex;
      '' = :data:`DEFAULT_SITES`) and optionally scope ('layer') and initial (0.0).
    optimizer: the optimizer to wrap.
    total_steps: the run's number of updates.
  Returns:
    ``optimizer`` itself when target is 0, else the pruning wrapper.
  """
  cfg = {**SPARSITY_DEFAULTS, **(config.to_dict() if hasattr(config, 'to_dict') else config)}
  _check_config(cfg)
  if not cfg['target']:
    return optimizer
  begin_step, end_step = round(cfg['begin'] * total_steps), round(cfg['end'] * total_steps)
  schedule = polynomial_schedule(cfg['initial'], cfg['target'], begin_step, end_step)
  return with_pruning(optimizer, schedule, begin_step=begin_step, end_step=end_step,
                      frequency=cfg['frequency'], sites=cfg['sites'] or DEFAULT_SITES,
                      method=cfg['method'], scope=cfg['scope'])


# The trainer's `config.sparsity` block: target = final sparsity of each site (0.0 = off),
# reached by Zhu & Gupta's cubic schedule between the begin and end fractions of
# training, masks recomputed every `frequency` steps; method 'magnitude' | 'movement';
# scope 'layer' | 'global' threshold; sites a regex over param paths ('' = the dense
# kernels of the encoder's attention and MLP projections); initial sparsity at begin.
SPARSITY_DEFAULTS = {'target': 0.0, 'method': 'magnitude', 'begin': 0.1, 'end': 0.7,
                     'frequency': 10, 'sites': '', 'scope': 'layer', 'initial': 0.0}


def _check_config(cfg: dict) -> None:
  _check_range('target', cfg['target'])
  _check_range('initial', cfg['initial'])
  begin, end = cfg['begin'], cfg['end']
  if not 0.0 <= begin <= end <= 1.0:
    raise ValueError(f'sparsity: need 0 <= begin <= end <= 1 (fractions of training), got '
                     f'begin={begin!r}, end={end!r}.')
  if cfg['method'] not in METHODS:
    raise ValueError(f'sparsity: method must be one of {METHODS}, got {cfg["method"]!r}.')
  if cfg['scope'] not in SCOPES:
    raise ValueError(f'sparsity: scope must be one of {SCOPES}, got {cfg["scope"]!r}.')
  if not isinstance(cfg['frequency'], int) or cfg['frequency'] < 1:
    raise ValueError(f'sparsity: frequency must be an int >= 1, got {cfg["frequency"]!r}.')


class GradualPruning(Technique):
  """`config.sparsity.target` > 0: unstructured pruning during training, masks in the
  optimizer state (`from_config`), inside the freezing partition."""
  name = 'sparsity'
  config_keys = ('sparsity',)

  def active(self, config) -> bool:
    return bool(config.sparsity.target)

  def check(self, config) -> None:
    _check_config(config.sparsity.to_dict())
    if config.sparsity.target and config.ema_decay:
      raise ValueError('config.sparsity.target > 0 needs config.ema_decay = 0: the average '
                       'of the params is not sparse')

  def optimizer(self, config, tx, total_steps):
    return from_config(config.sparsity, tx, total_steps)


TECHNIQUE = GradualPruning()


def sparsity_report(params: Any, sites: str = DEFAULT_SITES) -> dict[str, float]:
  """Fraction of exact zeros per site and over all sites.

  Args:
    params: a params pytree.
    sites: regex of the pruned weights' paths (as :func:`with_pruning`).
  Returns:
    {path: fraction of zeros} for each site, plus 'overall' (zeros / weights of all sites).

  Example: ``sparsity_report(result['params'])['overall']`` -> 0.5 after a 50 % run.
  """
  is_site = site_tree(params, sites)
  report, zeros, total = {}, 0, 0
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  for (kp, leaf), site in zip(leaves, jax.tree.leaves(is_site)):
    if site:
      x = np.asarray(leaf)
      report[path_str(kp)] = float(np.mean(x == 0))
      zeros, total = zeros + int(np.sum(x == 0)), total + x.size
  report['overall'] = zeros / total
  return report


def storage_bytes(params: Any, sites: str = DEFAULT_SITES) -> dict[str, int]:
  """Bytes to store ``params``: dense, ``np.savez_compressed``, and sites as CSR.

  Args:
    params: a params pytree.
    sites: regex of the pruned weights' paths; only these are stored as CSR.

  This measures storage only: with no sparse kernel (XLA:CPU here) a pruned model runs
  at the speed of the dense one.

  Returns:
    'dense' (sum of array bytes), 'npz_compressed' (a compressed .npz file of all
    leaves) and 'csr' (sites as CSR over their flattened-to-2D kernels: values, int32
    column indices and row pointers; every other leaf dense).
  """
  is_site = jax.tree.leaves(site_tree(params, sites))
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  arrays = {path_str(kp): np.asarray(x) for kp, x in leaves}
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  csr = 0
  for (path, x), site in zip(arrays.items(), is_site):
    if site and x.ndim >= 2:
      rows = x.reshape(x.shape[0], -1)
      nnz = int(np.count_nonzero(rows))
      csr += nnz * (x.itemsize + 4) + (rows.shape[0] + 1) * 4
    else:
      csr += x.nbytes
  return {'dense': sum(x.nbytes for x in arrays.values()),
          'npz_compressed': len(buffer.getvalue()), 'csr': csr}
