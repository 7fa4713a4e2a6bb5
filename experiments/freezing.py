r"""What to freeze? Full fine-tuning vs feature extractor vs BitFit vs bottom-k, same budget.

    python -m experiments.freezing --config experiments/configs/freezing.py \
        --out runs/freezing
    python -m experiments.freezing --config experiments/configs/freezing.py:runlocal \
        --out /tmp/freezing

The config (experiments/configs/freezing.py) holds the settings, the variants and the
measured numbers; fields can be overridden with --config.<field>=<value>.

Every preset is one `research.train.trainer.train_and_evaluate` run of the bundled
MiniLM-L6 with the same data, steps, batch size, schedule (6 % warmup, linear decay),
seed and head (layer_mix 'top', `pooling`, linear classifier); only the freezing rules
(`research.transforms.freeze.preset`) and the learning rate differ:

  preset              frozen                                  learning rate
  full                nothing                                 1e-4
  feature_extractor   the whole encoder (head only trains)    1e-3
  bitfit              encoder weights; encoder biases train   1e-3
  bottom:3            embeddings + layers 0..2                1e-4

Reported per preset: dev accuracy at the end, trainable / total parameters, the bytes
of optimizer state (the same `with_freezing(make_optimizer(...))` the trainer builds,
measured as `optimizer_state_bytes(jax.eval_shape(tx.init, params))`: frozen params
hold no Adam moments), and the wall time of the whole run (data, compile, train,
evaluation, checkpoints). Writes results.md and results.json to --out; each run's
workdir (checkpoints, metrics) goes to --out/workdirs/<preset> and is deleted after the
run unless `keep_workdirs` (a leftover workdir would otherwise be resumed).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Sequence

from absl import app, flags
import jax
from ml_collections import config_flags

from research.train.defaults import trainer_defaults
from research.train.optimizers import make_optimizer
from research.train.trainer import train_and_evaluate
from research.transforms import freeze


def _define_flags():
  # Defined when run as a script only, so importing this module (tests, notebooks) does
  # not clash with other scripts' --config / --out.
  config_flags.DEFINE_config_file('config', None, 'experiments/configs/freezing.py[:args]')
  flags.DEFINE_string('out', 'runs/freezing', 'Folder for results.md/.json and workdirs.')
  flags.mark_flags_as_required(['config'])


def presets(config) -> list[str]:
  """The config's preset names, validated, each with a learning rate."""
  names = [name for name in config.presets.split(',') if name]
  for name in names:
    freeze.preset(name)  # an unknown name is an error naming the valid ones
    if learning_rate(config, name) is None:
      raise ValueError(f'no learning rate for preset {name!r}; set '
                       f'--config.lr.{name.partition(":")[0]}=VALUE')
  return names


def learning_rate(config, preset: str) -> float | None:
  """The rate of `preset`'s kind ('bottom:3' -> config.lr.bottom), or None."""
  return config.lr.get(preset.partition(':')[0])


def trainer_config(config, preset: str):
  """The trainer config of one preset: shared budget, preset's rules and lr."""
  c = trainer_defaults()
  c.model = config.model
  c.task = 'sst2'
  c.data_dir = config.data_dir
  c.train_examples = config.train_examples
  c.eval_examples = config.eval_examples
  c.max_length = config.max_length
  c.pad_multiple = config.pad_multiple
  c.batch_size = config.batch_size
  c.eval_batch_size = config.eval_batch_size
  c.num_epochs = config.epochs
  c.total_steps = config.total_steps
  c.pooling = config.pooling
  c.layer_mix = 'top'
  c.freeze = preset
  c.seed = config.seed
  c.log_every = config.log_every
  c.optimizer.learning_rate = learning_rate(config, preset)
  return c


def optimizer_state_size(config, params, total_steps: int) -> int:
  """Bytes of the optimizer state the trainer builds for `config` (by eval_shape)."""
  # Gradient accumulation is the trainer's business, not an optimizer field; the
  # presets never accumulate, so leaving it out measures the same optimizer.
  opt_config = {k: v for k, v in config.optimizer.to_dict().items()
                if k != 'accumulate_steps'}
  opt_config['total_steps'] = total_steps
  tx = freeze.with_freezing(make_optimizer(opt_config), params, freeze.preset(config.freeze))
  return freeze.optimizer_state_bytes(jax.eval_shape(tx.init, params))


def run_preset(config, preset: str, out: str) -> dict[str, Any]:
  """Trains and evaluates one preset in out/workdirs/<preset>; returns its table row."""
  c = trainer_config(config, preset)
  workdir = os.path.join(out, 'workdirs', preset.replace(':', '_'))
  shutil.rmtree(workdir, ignore_errors=True)  # a leftover workdir would be resumed
  start = time.perf_counter()
  result = train_and_evaluate(c, workdir)
  wall = time.perf_counter() - start
  row = {
      'preset': preset,
      'learning_rate': c.optimizer.learning_rate,
      'dev_accuracy': float(result['final']['accuracy']),
      'best_dev_accuracy': float(result['best']['score']),
      'trainable_params': int(result['trainable_params']),
      'total_params': int(result['total_params']),
      'optimizer_state_bytes': optimizer_state_size(c, result['params'], result['steps']),
      'steps': int(result['steps']),
      'wall_seconds': wall,
  }
  if not config.keep_workdirs:
    shutil.rmtree(workdir, ignore_errors=True)
    if not os.listdir(os.path.dirname(workdir)):
      os.rmdir(os.path.dirname(workdir))
  logging.info('%s: %s', preset, row)
  return row


def _bytes(n: int) -> str:
  for unit, size in (('MiB', 2**20), ('KiB', 2**10)):
    if n >= size:
      return f'{n / size:.2f} {unit}'
  return f'{n} B'


def markdown_table(rows: Sequence[dict]) -> str:
  lines = ['| preset | lr | dev acc (%) | trainable params | % of total | '
           'optimizer state | wall time (s) |', '|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    percent = 100 * r['trainable_params'] / r['total_params']
    lines.append(
        f'| {r["preset"]} | {r["learning_rate"]:.0e} | {r["dev_accuracy"]:.2f} | '
        f'{r["trainable_params"]:,} | {percent:.{2 if percent >= 0.1 else 4}f} | '
        f'{_bytes(r["optimizer_state_bytes"])} | {r["wall_seconds"]:.0f} |')
  return '\n'.join(lines) + '\n'


def run(config, out: str, command: str = '') -> dict[str, Any]:
  """Runs every preset of `config`, writes results.md/.json to `out`.

  Args:
    config: from experiments/configs/freezing.py.
    out: output folder (created).
    command: the command line, recorded in results.json.
  Returns:
    The dict written to results.json.
  """
  names = presets(config)  # fail before the first (minutes-long) run
  os.makedirs(out, exist_ok=True)
  rows = [run_preset(config, name, out) for name in names]
  result = {
      'config': {**config.to_dict(), 'presets': names, 'out': out},
      'rows': rows,
      'command': command,
  }
  header = (f'# Freezing: SST-2, {config.model}, {config.train_examples or "all"} train '
            f'sentences, {config.epochs} epoch(s) of batch {config.batch_size}, '
            f'max_length {config.max_length}, {config.pooling} pooling, seed '
            f'{config.seed}\n\n')
  table = markdown_table(rows)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(header + table)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print(header + table)
  return result


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # orbax logs every file it writes
  run(flags.FLAGS.config, flags.FLAGS.out,
      command='python -m experiments.freezing ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
