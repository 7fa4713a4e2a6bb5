"""LAMB against AdamW as the batch grows (You et al. 2020): final MLM loss per batch size.

    result = run(defaults(), 'runs/lamb_batch')

Each (optimizer, batch size) is one `train_and_evaluate` run of a model pre-trained from
scratch (`config.scratch`) on the same corpus, seeing the same number of sequences; only
the batch size, the number of updates and the (square-root scaled) learning rate change.
The final dev MLM loss on held-out sequences with fixed masks is what is compared.
Writes results.md, results.json and loss_vs_batch.png to `out`. A run whose folder holds
its row (row.json) from the same trainer settings is not run again.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

import ml_collections

from research import specs
from research.evaluate import plots
from research.runs import study
from research.train import defaults as trainer_schema


SIZES = {
    # (scratch architecture, max_length, sequences per run, objective)
    # ~2.5 min per run on 2 CPU cores: the tied 30522-word table dominates a model this
    # small (its logits at the predicted tokens, its gradient and Adam moments).
    'cpu': ('num_layers=2,hidden_size=128,num_heads=2,intermediate_size=512', 32, 65536,
            'mlm'),
    'full': ('num_layers=4,hidden_size=256,num_heads=4,intermediate_size=1024', 128, 1048576,
             'mlm+sop'),
}


def defaults(size: str = 'cpu') -> ml_collections.ConfigDict:
  """The study's settings at `size` ('cpu' | 'full'; experiments/configs/lamb_batch.py)."""
  if size not in SIZES:
    raise ValueError(f'size={size!r}; expected one of {sorted(SIZES)}')
  scratch, max_length, examples, objective = SIZES[size]
  c = ml_collections.ConfigDict()
  c.model = 'minilm-l6'        # the tokenizer and architecture family (weights unused)
  c.scratch = scratch          # EncoderConfig fields of the model trained from scratch
  c.corpus = 'gutenberg'       # a staged corpus, a .txt file or folder
  c.max_documents = 0          # 0 = all
  c.objective = objective      # 'mlm' | 'mlm+nsp' | 'mlm+sop'
  c.max_length = max_length
  c.examples = examples        # sequences seen by every run
  c.batch_sizes = '64,256,1024,4096'
  c.micro_batch = 256          # rows per forward pass; larger batches accumulate
  c.optimizers = 'adamw,lamb'
  c.base_batch = 64            # the batch at which lr = the base rate below
  # Base rates at base_batch, each the best of a short sweep there (16,384 sequences,
  # CPU size; dev MLM loss): AdamW 1e-3 6.68, 3e-3 6.73; LAMB 2e-3 9.26, 1e-2 6.70,
  # 3e-2 6.75, 1e-1 6.97. LAMB scales each layer's step to its weights' norm, which is
  # small at init (std 0.02), hence its ~10x rate. Larger batches use the sqrt rule.
  c.lr = ml_collections.ConfigDict({'adamw': 1e-3, 'lamb': 1e-2})
  c.warmup_ratio = 0.1
  c.weight_decay = 0.01
  c.clip_norm = 1.0
  c.dev_sequences = 512        # held-out sequences with fixed masks: the final MLM loss
  c.eval_batch_size = 256
  c.seed = 0
  c.log_every = 50
  c.keep_workdirs = True       # finished runs are skipped when the study is rerun
  return c


def learning_rate(config, optimizer: str, batch: int) -> float:
  """The square-root rule: lr(base) * sqrt(batch / base_batch)."""
  return config.lr[optimizer] * math.sqrt(batch / config.base_batch)


def check(config) -> tuple[list[str], list[int]]:
  """(optimizers, batch sizes), validated before the first run."""
  optimizers = specs.items(config.optimizers, what='optimizers')
  for name in optimizers:
    if name not in config.lr:
      raise ValueError(f'no base learning rate for optimizer {name!r}: set '
                       f'--config.lr.{name}=VALUE')
  batches = specs.items(config.batch_sizes, int, what='batch_sizes')
  for batch in batches:
    if batch % min(batch, config.micro_batch):
      raise ValueError(f'batch size {batch} is not a multiple of micro_batch='
                       f'{config.micro_batch}')
    if config.examples // batch < 1:
      raise ValueError(f'examples={config.examples} is less than one batch of {batch}')
  return optimizers, batches


def trainer_config(config, optimizer: str, batch: int):
  """The trainer config of one run: the shared budget, this batch and optimizer."""
  c = trainer_schema.pretraining_defaults(config.corpus, config.objective)
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

  row = study.run_or_reuse(c, os.path.join(out, f'{optimizer}_b{batch}'), make_row,
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


def run(config, out: str, command: str = '') -> dict[str, Any]:
  """Every (optimizer, batch size) run; writes results.md/.json and the plot to `out`."""
  optimizers, batches = check(config)
  os.makedirs(out, exist_ok=True)
  rows = [run_one(config, o, b, out) for b in batches for o in optimizers]
  title = (f'{config.objective} from scratch ({config.scratch}), {config.corpus}, '
           f'{config.examples} sequences of {config.max_length}')
  table = markdown_table(rows, optimizers, batches)
  plots.loss_vs_batch(rows, optimizers, os.path.join(out, 'loss_vs_batch.png'), title)
  result = {'config': config.to_dict(), 'rows': rows, 'command': command}
  return study.write_results(out, title, table, result, {
      'benchmark': 'lamb_batch', 'examples': config.examples, 'batches': batches,
      **{f'{o}_mlm_loss': [next(r['mlm_loss'] for r in rows
                                if r['optimizer'] == o and r['batch'] == b)
                           for b in batches] for o in optimizers}})
