"""A run's trainer config: the generic checks, and its config.json in the run folder.

    check(config)                           # fails fast, naming the field
    save(config, workdir)                   # config.json (a changed resume: config.1.json)
    resume_mismatch(workdir, config, ...)   # why a checkpoint cannot resume, for the user

Technique fields (quant, lora, sparsity, distill, ema_decay) are checked by their own
technique (`research/train/techniques.py`).
"""
from __future__ import annotations

import json
import logging
import os

from research.train import source, student


def check(config) -> None:
  """Fails fast, naming the field, on values the loop cannot use."""
  if config.scratch and config.init_from:
    raise ValueError('config.scratch (random params) and config.init_from (a saved run) '
                     'exclude each other; set one')
  if config.scratch:
    source.scratch_fields(config.scratch)  # raises naming an unknown field
  if config.student:
    if config.scratch:
      raise ValueError('config.student (cut from a model) and config.scratch (random params) '
                       'exclude each other; set one')
    student.parse(config.student)  # raises naming a bad key or order
  for name in ('batch_size', 'max_length', 'pad_multiple', 'log_every'):
    if config[name] <= 0:
      raise ValueError(f'config.{name} must be positive, got {config[name]}')
  for name in ('num_epochs', 'total_steps', 'eval_every', 'checkpoint_every'):
    if config[name] < 0:
      raise ValueError(f'config.{name} must be >= 0, got {config[name]}')
  if not config.num_epochs and not config.total_steps:
    raise ValueError('Set config.num_epochs or config.total_steps (both are 0)')
  if config.optimizer.learning_rate < 0:
    raise ValueError(f'config.optimizer.learning_rate must be >= 0, got '
                     f'{config.optimizer.learning_rate}')
  accumulate = config.optimizer.accumulate_steps
  if not isinstance(accumulate, int) or accumulate < 1:
    raise ValueError(f'config.optimizer.accumulate_steps must be an int >= 1, got {accumulate}')
  if config.keep_checkpoints < 1:
    raise ValueError(f'config.keep_checkpoints must be >= 1, got {config.keep_checkpoints}')


def save(config, workdir: str) -> str:
  """Writes the run's config to `workdir/config.json`; returns the path written.

  A resumed run whose config differs keeps the original file and writes its own beside
  it (`config.1.json`, ...), so what a checkpoint was trained with is never lost.
  """
  text = config.to_json_best_effort(indent=2, sort_keys=True) + '\n'
  path = os.path.join(workdir, 'config.json')
  n = 0
  while os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return path
    n += 1
    path = os.path.join(workdir, f'config.{n}.json')
  if n:
    logging.warning('The config differs from the one this workdir was started with; '
                    'saving it as %s', path)
  with open(path, 'w') as f:
    f.write(text)
  return path


def differences(workdir: str, config) -> list[str]:
  """'field: saved -> now' for each leaf that differs from the workdir's config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    saved = json.load(f)
  now = json.loads(config.to_json_best_effort())

  def flat(tree, prefix=''):
    if not isinstance(tree, dict):
      return {prefix: tree}
    out = {}
    for key, value in tree.items():
      out.update(flat(value, f'{prefix}.{key}' if prefix else key))
    return out
  saved, now = flat(saved), flat(now)
  missing = object()
  return [f'{k}: {saved.get(k, "(absent)")!r} -> {now.get(k, "(absent)")!r}'
          for k in sorted(set(saved) | set(now))
          if saved.get(k, missing) != now.get(k, missing)]


def resume_mismatch(workdir: str, config, step: int | None, error: Exception) -> str:
  """Why the workdir's latest checkpoint cannot resume under `config`, for the user."""
  changed = differences(workdir, config)
  detail = str(error).strip().split('\n')
  return (f'{workdir} holds a checkpoint (step {step}) whose train state does not fit this '
          'config, so it cannot be resumed: '
          + ('the config differs from the one the run was started with (config.json) in '
             + '; '.join(changed[:12]) + (' ...' if len(changed) > 12 else '')
             if changed else 'the saved state has other arrays or shapes')
          + f'. Resume with the original config, or give a new --workdir (the checkpoints in '
          f'{workdir} are untouched). Orbax said: {" ".join(detail[:6])[:600]}')
