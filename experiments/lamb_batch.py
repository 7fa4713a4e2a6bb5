r"""LAMB against AdamW as the batch grows (You et al. 2020): final MLM loss per batch size.

    python -m experiments.lamb_batch --config experiments/configs/lamb_batch.py \
        --out runs/lamb_batch

See experiments/configs/lamb_batch.py for the settings. Each (optimizer, batch size) is
one `train_and_evaluate` run of a model pre-trained from scratch (`config.scratch`) on
the same corpus, seeing the same number of sequences; only the batch size, the number
of updates and the (square-root scaled) learning rate change. The final dev MLM loss on
held-out sequences with fixed masks is what is compared. Writes results.md,
results.json and loss_vs_batch.png to --out and ends by printing one JSON line. A run
whose folder holds its row (row.json) from the same trainer settings is not run again.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

from absl import app, flags
from ml_collections import config_flags

from experiments import study_runs
from experiments.configs import pretrain


def _define_flags():
  config_flags.DEFINE_config_file('config', None, 'experiments/configs/lamb_batch.py[:args]')
  flags.DEFINE_string('out', 'runs/lamb_batch', 'Folder for results and run folders.')
  flags.mark_flags_as_required(['config'])


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(',') if x]


def learning_rate(config, optimizer: str, batch: int) -> float:
  """The square-root rule: lr(base) * sqrt(batch / base_batch)."""
  return config.lr[optimizer] * math.sqrt(batch / config.base_batch)


def check(config) -> tuple[list[str], list[int]]:
  """(optimizers, batch sizes), validated before the first run."""
  optimizers = [o for o in config.optimizers.split(',') if o]
  for name in optimizers:
    if name not in config.lr:
      raise ValueError(f'no base learning rate for optimizer {name!r}: set '
                       f'--config.lr.{name}=VALUE')
  batches = _ints(config.batch_sizes)
  for batch in batches:
    if batch % min(batch, config.micro_batch):
      raise ValueError(f'batch size {batch} is not a multiple of micro_batch='
                       f'{config.micro_batch}')
    if config.examples // batch < 1:
      raise ValueError(f'examples={config.examples} is less than one batch of {batch}')
  return optimizers, batches


def trainer_config(config, optimizer: str, batch: int):
  """The trainer config of one run: the shared budget, this batch and optimizer."""
  c = pretrain.get_config(f'corpus={config.corpus},objective={config.objective}')
  c.model, c.scratch, c.seed = config.model, config.scratch, config.seed
  c.max_length = c.pad_multiple = config.max_length  # one padded shape: one compile
  micro = min(batch, config.micro_batch)
  c.batch_size = micro
  c.optimizer.accumulate_steps = batch // micro
  c.total_steps = config.examples // batch
  c.eval_every = c.checkpoint_every = c.total_steps  # evaluate once, at the end
  c.eval_batch_size = config.eval_batch_size
  c.log_every = max(1, min(config.log_every, c.total_steps // 4))
  c.corpus.dev_sequences = config.dev_sequences
  c.corpus.max_documents = config.max_documents
  c.optimizer.name = optimizer
  c.optimizer.learning_rate = learning_rate(config, optimizer, batch)
  c.optimizer.warmup_ratio = config.warmup_ratio
  c.optimizer.weight_decay = config.weight_decay
  c.optimizer.clip_norm = config.clip_norm
  return c


def run_one(config, optimizer: str, batch: int, out: str) -> dict[str, Any]:
  """Trains one (optimizer, batch) run in out/<optimizer>_b<batch>; returns its row."""
  c = trainer_config(config, optimizer, batch)

  def make_row(result):
    row = {'optimizer': optimizer, 'batch': batch, 'steps': c.total_steps,
           'learning_rate': c.optimizer.learning_rate}
    if 'diverged' in result:
      return {**row, 'mlm_loss': float('nan'), 'mlm_accuracy': float('nan'),
              'diverged': result['diverged']}
    return {**row, 'mlm_loss': float(result['final']['mlm_loss']),
            'mlm_accuracy': float(result['final']['mlm_accuracy'])}

  row = study_runs.run_or_reuse(c, os.path.join(out, f'{optimizer}_b{batch}'), make_row,
                                keep=config.keep_workdirs)
  logging.info('%s batch %d: %s', optimizer, batch, row)
  return row


def markdown_table(rows: Sequence[dict], optimizers: Sequence[str],
                   batches: Sequence[int]) -> str:
  by = {(r['optimizer'], r['batch']): r for r in rows}
  head = '| batch | updates |' + ''.join(f' {o} lr | {o} MLM loss | {o} MLM acc (%) |'
                                          for o in optimizers)
  lines = [head, '|' + '---:|' * (2 + 3 * len(optimizers))]
  for batch in batches:
    cells = [str(batch), str(by[(optimizers[0], batch)]['steps'])]
    for o in optimizers:
      r = by[(o, batch)]
      cells += [f'{r["learning_rate"]:.2e}', f'{r["mlm_loss"]:.3f}', f'{r["mlm_accuracy"]:.2f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot(rows: Sequence[dict], optimizers: Sequence[str], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for o in optimizers:
    mine = sorted((r for r in rows if r['optimizer'] == o), key=lambda r: r['batch'])
    ax.plot([r['batch'] for r in mine], [r['mlm_loss'] for r in mine], 'o-', label=o)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('global batch size (same sequences seen)')
  ax.set_ylabel('final dev MLM loss')
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config, out: str, command: str = '') -> dict[str, Any]:
  """Every (optimizer, batch size) run; writes results.md/.json and the plot to `out`."""
  optimizers, batches = check(config)
  os.makedirs(out, exist_ok=True)
  rows = [run_one(config, o, b, out) for b in batches for o in optimizers]
  title = (f'{config.objective} from scratch ({config.scratch}), {config.corpus}, '
           f'{config.examples} sequences of {config.max_length}')
  table = markdown_table(rows, optimizers, batches)
  plot(rows, optimizers, os.path.join(out, 'loss_vs_batch.png'), title)
  result = {'config': config.to_dict(), 'rows': rows, 'command': command}
  study_runs.write_results(out, title, table, result, {
      'benchmark': 'lamb_batch', 'examples': config.examples, 'batches': batches,
      **{f'{o}_mlm_loss': [next(r['mlm_loss'] for r in rows
                                if r['optimizer'] == o and r['batch'] == b)
                           for b in batches] for o in optimizers}})
  return result


def main(argv):
  del argv
  study_runs.main_from_flags(run, 'experiments.lamb_batch')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
