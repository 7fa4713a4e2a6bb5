"""Iterative structured pruning with a stopping rule (Michel et al. 2019, section 6 style).

    model, params, curve = iterative_prune(model, params, batches, evaluate,
                                           heads_step=0.1, min_ratio=0.99)

Each round scores heads (and FFN neurons) on the current, physically pruned model
(`prune.importance`), removes the least important fraction of what remains
(`prune.lowest_removed`, `prune.remove`) and evaluates on dev; it stops at the first
round whose metric falls below `min_ratio` of the start and returns the last model that
kept it, with the whole curve. No retraining happens between rounds.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from research.models.sizes import count_params
from research.transforms.prune import (importance, lowest_removed, remove,
                                       removable, set_heads, set_widths)


def _step_count(total: int, fraction: float, most: int) -> int:
  if fraction <= 0:
    return 0
  return min(max(1, int(round(fraction * total))), most)


def iterative_prune(model, params: Mapping[str, Any], batches: Callable[[], Iterable[dict]],
                    evaluate: Callable[[Any, Any], float], *, heads_step: float = 0.1,
                    neurons_step: float = 0.0, min_ratio: float = 0.99,
                    max_rounds: int = 100, min_heads_per_layer: int = 0
                    ) -> tuple[Any, dict, list[dict]]:
  """Prunes in rounds until the dev metric falls below `min_ratio` of the start.

  Each round recomputes importance on the current (physically pruned) model, removes
  the least important `heads_step` of the remaining heads (at least one; never the
  last) and `neurons_step` of the remaining FFN neurons, and evaluates.

  Args:
    model: a TaskModel.
    params: its params.
    batches: `batches()` returns a fresh iterable of batches for `importance`.
    evaluate: `evaluate(model, params) -> metric`, higher is better (dev accuracy).
    heads_step: fraction of the remaining heads removed per round, in [0, 1).
    neurons_step: fraction of the remaining FFN neurons removed per round, in [0, 1).
    min_ratio: stop once the metric is below min_ratio * the starting metric.
    max_rounds: at most this many rounds.
    min_heads_per_layer: heads every layer keeps (0: a layer may lose all of them).

  Returns:
    (model, params) of the last round that kept the metric, and the curve: one dict
    per evaluated model ('round', 'heads', 'neurons', 'params', 'metric', 'accepted').
  """
  for name, value in (('heads_step', heads_step), ('neurons_step', neurons_step)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f'{name} must be in [0, 1), got {value}')
  if heads_step == 0 and neurons_step == 0:
    raise ValueError('heads_step and neurons_step are both 0: nothing would be pruned')
  if not 0.0 < min_ratio <= 1.0:
    raise ValueError(f'min_ratio must be in (0, 1], got {min_ratio}')

  def point(round_, m, p, metric, accepted):
    return {'round': round_, 'heads': sum(set_heads(m.encoder).values()),
            'neurons': sum(set_widths(m.encoder).values()), 'params': count_params(p),
            'metric': float(metric), 'accepted': accepted}

  start = float(evaluate(model, params))
  curve = [point(0, model, params, start, True)]
  for round_ in range(1, max_rounds + 1):
    heads = {j: np.zeros(n) for j, n in set_heads(model.encoder).items()}
    total_h = sum(set_heads(model.encoder).values())
    total_n = sum(set_widths(model.encoder).values())
    n_heads = _step_count(total_h, heads_step,
                          min(total_h - 1, removable(heads, min_heads_per_layer)))
    n_neurons = _step_count(total_n, neurons_step, total_n)
    if not n_heads and not n_neurons:
      break
    scores = importance(model, params, batches())
    keep_heads = lowest_removed(scores.heads, n_heads, min_heads_per_layer)
    config, pruned = remove(model.encoder, params, keep_heads,
                            lowest_removed(scores.neurons, n_neurons))
    candidate = model.clone(encoder=config)
    metric = float(evaluate(candidate, pruned))
    accepted = metric >= min_ratio * start
    curve.append(point(round_, candidate, pruned, metric, accepted))
    if not accepted:
      break
    model, params = candidate, pruned
  return model, dict(params), curve
