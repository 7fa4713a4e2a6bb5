r"""What to freeze? Full fine-tuning vs feature extractor vs BitFit vs bottom-k, same budget.

    # SST-2, first 4,000 train sentences, 1 epoch (125 steps of 32), full dev set:
    python -m experiments.freezing --out runs/freezing
    # tiny CPU smoke run (64 train / 64 dev sentences, 4 steps per preset):
    python -m experiments.freezing --runlocal --out /tmp/freezing

Every preset is one `research.train.trainer.train_and_evaluate` run of the bundled
MiniLM-L6 with the same data, steps, batch size, schedule (6 % warmup, linear decay),
seed and head (layer_mix 'top', --pooling, linear classifier); only the freezing rules
(`research.transforms.freeze.preset`) and the learning rate differ:

  preset              frozen                                  learning rate
  full                nothing                                 1e-4
  feature_extractor   the whole encoder (head only trains)    1e-3
  bitfit              encoder weights; encoder biases train   1e-3
  bottom:3            embeddings + layers 0..2                1e-4

Feature extractor and BitFit train few parameters that start far from a solution (a
zero-mean random head, biases), so they need a ~10x larger learning rate; full and
bottom-k use the usual fine-tuning rate. Override with --lr preset=value (repeatable).

Reported per preset: dev accuracy at the end, trainable / total parameters, the bytes
of optimizer state (the same `with_freezing(make_optimizer(...))` the trainer builds,
measured as `optimizer_state_bytes(jax.eval_shape(tx.init, params))`: frozen params
hold no Adam moments), and the wall time of the whole run (data, compile, train,
evaluation, checkpoints). Writes results.md and results.json to --out; each run's
workdir (checkpoints, metrics) goes to --out/workdirs/<preset> and is deleted after the
run unless --keep_workdirs (a leftover workdir would otherwise be resumed).

Measured with the defaults (4,000 train sentences, 125 steps, 872 dev; 2 shared CPU
cores): dev accuracy full 82.6, bottom:3 82.3, BitFit 78.4, feature extractor 72.4;
trainable 22.7M / 5.47M / 26,882 / 770; Adam state 173 MiB / 42 MiB / 210 KiB / 6 KiB;
wall 161 / 134 / 131 / 68 s (the trainer stops gradients at a wholly frozen encoder,
so the feature extractor skips the encoder's backward pass; BitFit and bottom-k still
compute it). The frozen-encoder head is under-trained at this budget: a linear probe
on all 67k sentences reaches ~80.7 (experiments/layer_probe.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Sequence

import jax

from experiments.configs import common
from research.train.optimizers import make_optimizer
from research.train.trainer import train_and_evaluate
from research.transforms import freeze

PRESETS = ('full', 'feature_extractor', 'bitfit', 'bottom:3')
# Learning rate per preset (see the module docstring for why they differ).
LEARNING_RATES = {
    'full': 1e-4,
    'feature_extractor': 1e-3,
    'bitfit': 1e-3,
    'bottom:3': 1e-4,
}


def make_config(args: argparse.Namespace, preset: str):
  """The trainer config of one preset: shared budget, preset's rules and lr."""
  c = common.trainer_defaults()
  c.model = args.model
  c.task = 'sst2'
  c.data_dir = args.data_dir
  c.train_examples = args.train_examples
  c.eval_examples = args.eval_examples
  c.max_length = args.max_length
  c.pad_multiple = args.pad_multiple
  c.batch_size = args.batch_size
  c.eval_batch_size = args.eval_batch_size
  c.num_epochs = args.epochs
  c.total_steps = args.total_steps
  c.pooling = args.pooling
  c.layer_mix = 'top'
  c.freeze = preset
  c.seed = args.seed
  c.log_every = args.log_every
  c.optimizer.learning_rate = args.lr[preset]
  return c


def optimizer_state_size(config, params, total_steps: int) -> int:
  """Bytes of the optimizer state the trainer builds for `config` (by eval_shape)."""
  opt_config = {**config.optimizer.to_dict(), 'total_steps': total_steps}
  tx = freeze.with_freezing(make_optimizer(opt_config), params, freeze.preset(config.freeze))
  return freeze.optimizer_state_bytes(jax.eval_shape(tx.init, params))


def run_preset(args: argparse.Namespace, preset: str) -> dict[str, Any]:
  config = make_config(args, preset)
  workdir = os.path.join(args.out, 'workdirs', preset.replace(':', '_'))
  shutil.rmtree(workdir, ignore_errors=True)  # a leftover workdir would be resumed
  start = time.perf_counter()
  result = train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  row = {
      'preset': preset,
      'learning_rate': config.optimizer.learning_rate,
      'dev_accuracy': float(result['final']['accuracy']),
      'best_dev_accuracy': float(result['best']['score']),
      'trainable_params': int(result['trainable_params']),
      'total_params': int(result['total_params']),
      'optimizer_state_bytes': optimizer_state_size(config, result['params'],
                                                    result['steps']),
      'steps': int(result['steps']),
      'wall_seconds': wall,
  }
  if not args.keep_workdirs:
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


def _parse_lr(items: Sequence[str]) -> dict[str, float]:
  lr = dict(LEARNING_RATES)
  for item in items or ():
    name, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--lr expects preset=value, got {item!r}')
    freeze.preset(name)  # validates the name
    lr[name] = float(value)
  return lr


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='minilm-l6')
  p.add_argument('--presets', default=','.join(PRESETS),
                 help=f'comma-separated freeze presets (default {",".join(PRESETS)})')
  p.add_argument('--train_examples', type=int, default=4000, help='0 = all')
  p.add_argument('--eval_examples', type=int, default=0, help='0 = all dev (872)')
  p.add_argument('--epochs', type=int, default=1)
  p.add_argument('--total_steps', type=int, default=0, help='0 = epochs * steps/epoch')
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--eval_batch_size', type=int, default=128)
  p.add_argument('--max_length', type=int, default=64)
  p.add_argument('--pad_multiple', type=int, default=16)
  p.add_argument('--pooling', choices=('mean', 'cls'), default='mean',
                 help='mean: all-MiniLM-L6-v2 was trained for mean-pooled embeddings')
  p.add_argument('--lr', action='append', metavar='PRESET=LR',
                 help=f'override a learning rate (defaults {LEARNING_RATES})')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--log_every', type=int, default=25)
  p.add_argument('--data_dir', default=None,
                 help='GLUE folder (default: $RESEARCH_DATA_DIR or ../shared/data/glue)')
  p.add_argument('--out', default='runs/freezing')
  p.add_argument('--keep_workdirs', action='store_true')
  p.add_argument('--runlocal', action='store_true',
                 help='tiny smoke run: 64 train / 64 dev, batch 16, max_length 32, 4 steps')
  args = p.parse_args(argv)
  if args.runlocal:
    args.train_examples, args.eval_examples = 64, 64
    args.batch_size, args.eval_batch_size = 16, 64
    args.max_length = args.pad_multiple = 32  # one compiled shape per step function
    args.epochs, args.log_every = 1, 2
  if args.data_dir is None:
    args.data_dir = common.default_data_dir('glue')
  args.lr = _parse_lr(args.lr)
  args.presets = [name for name in args.presets.split(',') if name]
  for name in args.presets:
    freeze.preset(name)
    if name not in args.lr:
      raise ValueError(f'no learning rate for preset {name!r}; pass --lr {name}=VALUE')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', force=True)
  os.makedirs(args.out, exist_ok=True)
  rows = [run_preset(args, name) for name in args.presets]
  result = {
      'config': {k: v for k, v in vars(args).items()},
      'rows': rows,
      'command': 'python -m experiments.freezing ' + ' '.join(
          sys.argv[1:] if argv is None else argv),
  }
  header = (f'# Freezing: SST-2, {args.model}, {args.train_examples or "all"} train '
            f'sentences, {args.epochs} epoch(s) of batch {args.batch_size}, max_length '
            f'{args.max_length}, {args.pooling} pooling, seed {args.seed}\n\n')
  table = markdown_table(rows)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(header + table)
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print(header + table)
  return result


if __name__ == '__main__':
  main()
