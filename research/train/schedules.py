"""Learning-rate schedules: linear warmup, then linear / cosine decay or constant.

Steps count optimizer updates; under gradient accumulation (``optax.MultiSteps``)
the schedule advances once per *accumulated* update, not per micro-batch.

Example:
  >>> sched = make_schedule(1e-3, total_steps=100, warmup_steps=10, kind='linear')
  >>> float(sched(0)), float(sched(10)), float(sched(100))
  (0.0, 0.001, 0.0)
"""
from typing import Optional

import optax

SCHEDULES = ('linear', 'cosine', 'constant')


def resolve_warmup(total_steps: int, warmup_steps: Optional[int] = None,
                   warmup_ratio: Optional[float] = None) -> int:
  """Returns the number of warmup steps from either a count or a ratio.

  Args:
    total_steps: total optimizer updates (> 0).
    warmup_steps: explicit count, or None.
    warmup_ratio: fraction of ``total_steps`` in [0, 1], or None.
  Returns:
    ``warmup_steps``, ``round(warmup_ratio * total_steps)`` or 0.
  Raises:
    ValueError: both given, or a value out of range (the field is named).
  """
  if warmup_steps is not None and warmup_ratio is not None:
    raise ValueError(f'give warmup_steps ({warmup_steps}) or warmup_ratio '
                     f'({warmup_ratio}), not both.')
  if warmup_ratio is not None:
    if not 0.0 <= warmup_ratio <= 1.0:
      raise ValueError(f'warmup_ratio must be in [0, 1], got {warmup_ratio}.')
    return int(round(warmup_ratio * total_steps))
  if warmup_steps is None:
    return 0
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
  return int(warmup_steps)


def make_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0,
                  kind: str = 'linear', end_value: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to ``learning_rate``, then ``kind`` until total_steps.

  Args:
    learning_rate: peak learning rate (>= 0).
    total_steps: total optimizer updates including warmup (> 0).
    warmup_steps: steps of linear warmup (0 <= warmup_steps <= total_steps).
    kind: 'linear' (to ``end_value``), 'cosine' (to ``end_value``) or
      'constant' (stays at ``learning_rate``).
    end_value: final learning rate for 'linear' and 'cosine'.
  Returns:
    An ``optax.Schedule`` (step -> learning rate), constant after total_steps.
  Raises:
    ValueError: naming the offending field and value.
  """
  if learning_rate < 0:
    raise ValueError(f'learning_rate must be >= 0, got {learning_rate}.')
  if total_steps <= 0:
    raise ValueError(f'total_steps must be > 0, got {total_steps}.')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'warmup_steps must be in [0, total_steps={total_steps}], '
                     f'got {warmup_steps}.')
  if kind not in SCHEDULES:
    raise ValueError(f'schedule must be one of {SCHEDULES}, got {kind!r}.')
  if kind == 'cosine' and warmup_steps < total_steps:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=end_value)
  warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  if kind in ('linear', 'cosine'):  # cosine here only when all steps warm up
    after = optax.linear_schedule(learning_rate, end_value,
                                  max(total_steps - warmup_steps, 1))
  else:
    after = optax.constant_schedule(learning_rate)
  if warmup_steps == 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])
