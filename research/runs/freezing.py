"""What to freeze? Full fine-tuning vs feature extractor vs BitFit vs bottom-k, same budget.

    result = run(defaults(), 'runs/freezing')

Every preset is one `train_and_evaluate` run with the same data, steps, batch size,
schedule, seed and head; only the freezing rules (`research.transforms.freeze.preset`)
and the learning rate differ. Reported per preset: dev accuracy, trainable / total
parameters, the bytes of optimizer state (the same `with_freezing(make_optimizer(...))`
the trainer builds, by `jax.eval_shape`: frozen params hold no Adam moments), and the
wall time of the whole run. Writes results.md and results.json to `out`; each run's
workdir goes to out/workdirs/<preset> and is deleted after the run unless
`keep_workdirs` (a leftover workdir would otherwise be resumed).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import jax
import ml_collections

from research import specs
from research.data.sources import default_data_dir
from research.evaluate import speed
from research.models.sizes import param_bytes
from research.runs import study
from research.train import techniques
from research.train.defaults import trainer_defaults
from research.train.optimizers import make_optimizer
from research.train.trainer import train_and_evaluate
from research.transforms import freeze


def defaults(model: str = 'minilm-l6') -> ml_collections.ConfigDict:
  """The study's settings (experiments/configs/freezing.py: variants, measured numbers)."""
  c = ml_collections.ConfigDict()
  c.model = model
  c.data_dir = default_data_dir('glue')  # '' = TFDS
  # Comma-separated `research.transforms.freeze.preset` names, or 'lora:<rank>' (LoRA
  # adapters on the query and value projections of a frozen encoder), run in this order.
  c.presets = 'full,feature_extractor,bitfit,bottom:3,lora:8'
  # Learning rate per preset kind (the name before ':'). Feature extractor, BitFit and
  # LoRA train few parameters that start far from a solution (a zero-mean random head,
  # biases, zero adapters), so they need a ~10x larger rate; the others use the usual
  # fine-tuning rate.
  c.lr = ml_collections.ConfigDict({
      'full': 1e-4, 'feature_extractor': 1e-3, 'bitfit': 1e-3,
      'frozen_embeddings': 1e-4, 'bottom': 1e-4, 'lora': 1e-3})
  # The budget every preset shares (fields of `research.train.defaults`).
  c.train_examples = 4000     # 0 = all
  c.eval_examples = 0         # 0 = all dev (872)
  c.epochs = 1
  c.total_steps = 0           # 0 = epochs * steps per epoch
  c.batch_size = 32
  c.eval_batch_size = 128
  c.max_length = 64
  c.pad_multiple = 16
  c.pooling = 'mean'          # all-MiniLM-L6-v2 was trained for mean-pooled embeddings
  c.seed = 0
  c.log_every = 25
  c.keep_workdirs = False     # each preset's workdir is deleted after its run
  return c


def presets(config) -> list[str]:
  """The config's preset names, validated, each with a learning rate: freeze presets
  ('full', 'bottom:3', ...) and 'lora:<rank>' (LoRA adapters on a frozen encoder)."""
  names = specs.items(config.presets, what='presets')
  for name in names:
    if specs.name_arg(name)[0] == 'lora':
      specs.int_arg(name, 'preset')
    else:
      freeze.preset(name)  # an unknown name is an error naming the valid ones
    if learning_rate(config, name) is None:
      raise ValueError(f'no learning rate for preset {name!r}; set '
                       f'--config.lr.{name.partition(":")[0]}=VALUE')
  return names


def learning_rate(config, preset: str) -> float | None:
  """The rate of `preset`'s kind ('bottom:3' -> config.lr.bottom), or None."""
  return config.lr.get(specs.name_arg(preset)[0])


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
  if specs.name_arg(preset)[0] == 'lora':  # the technique decides what is frozen
    c.freeze, c.lora.rank = 'full', specs.int_arg(preset, 'preset')
  else:
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
  rules = techniques.freeze_rules(techniques.active(config), config,
                                  freeze.preset(config.freeze))
  tx = freeze.with_freezing(make_optimizer(opt_config), params, rules)
  return param_bytes(jax.eval_shape(tx.init, params))


def run_preset(config, preset: str, out: str) -> dict[str, Any]:
  """Trains and evaluates one preset in out/workdirs/<preset>; returns its table row."""
  c = trainer_config(config, preset)
  workdir = os.path.join(out, 'workdirs', preset.replace(':', '_'))
  study.clear(workdir)  # a leftover workdir would be resumed
  result, wall = speed.timed_call(lambda: train_and_evaluate(c, workdir))
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
    study.drop(workdir)
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
  """Runs every preset of `config` (`defaults()`); writes results.md/.json to `out`
  (created) with `command` recorded; returns the results with the table and summary."""
  names = presets(config)  # fail before the first (minutes-long) run
  os.makedirs(out, exist_ok=True)
  rows = [run_preset(config, name, out) for name in names]
  result = {
      'config': {**config.to_dict(), 'presets': names, 'out': out},
      'rows': rows,
      'command': command,
  }
  title = (f'Freezing: SST-2, {config.model}, {config.train_examples or "all"} train '
           f'sentences, {config.epochs} epoch(s) of batch {config.batch_size}, '
           f'max_length {config.max_length}, {config.pooling} pooling, seed {config.seed}')
  return study.write_results(out, title, markdown_table(rows), result, {
      'benchmark': 'freezing', **{r['preset']: {k: r[k] for k in (
          'dev_accuracy', 'trainable_params', 'optimizer_state_bytes', 'wall_seconds')}
                                  for r in rows}})
