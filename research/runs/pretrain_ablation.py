"""NSP / SOP / MLM-only ablation: pre-train with each objective, fine-tune on pair tasks.

    result = run(defaults(), 'runs/pretrain_ablation')

Every objective gets the same corpus, architecture, steps, batch, rate and seed; only
the pre-training objective differs. Each pre-trained run is then fine-tuned on every
task with every seed by the same recipe. Runs go to out/pretrain_<objective> and
out/<objective>/<task>_s<seed>; each keeps its row and is reused when the study is
rerun with the same settings (`study.py`). Writes results.md and results.json to `out`.
"""
from __future__ import annotations

import logging
import os
import statistics
from typing import Any, Sequence

import ml_collections

from research import specs
from research.data import tasks as tasks_lib
from research.data.sources import default_data_dir
from research.runs import study
from research.train import defaults as trainer_schema


def defaults(continued: bool = False) -> ml_collections.ConfigDict:
  """The study's settings: small BERTs from scratch, or (`continued`) the bundled MiniLM
  pre-trained further with each objective."""
  c = ml_collections.ConfigDict()
  c.model = 'minilm-l6'   # tokenizer and architecture family (and weights when continued)
  # From scratch with these EncoderConfig fields ('' = continue from model's weights).
  c.scratch = '' if continued else (
      'num_layers=4,hidden_size=256,num_heads=4,intermediate_size=1024')
  c.corpus = 'gutenberg'
  c.max_documents = 0
  c.objectives = 'mlm,mlm+nsp,mlm+sop'
  c.pretrain_steps = 2000
  c.pretrain_batch = 64
  c.pretrain_lr = 1e-4 if continued else 5e-4
  c.max_length = 128
  c.dev_sequences = 256
  c.tasks = 'mrpc,stsb,sst2'
  c.seeds = '0,1,2'
  c.data_dir = default_data_dir('glue')
  c.finetune_epochs = 3
  c.finetune_examples = 8000   # first N train examples of each task (0 = all)
  c.finetune_lr = 1e-4
  # BERT fine-tunes from the pooler, which only the pair objectives train (MLM alone
  # leaves it random): that is part of what NSP could buy, so it is the default.
  c.pooling = 'pooler'
  c.seed = 0               # of the pre-training runs
  c.keep_workdirs = True   # finished runs are reused when the study is rerun
  return c


def check(config) -> tuple[list[str], list[str], list[int]]:
  """(objectives, tasks, seeds), validated before the first run."""
  objectives = specs.items(config.objectives, what='objectives')
  for name in objectives:
    if name not in ('mlm', 'mlm+nsp', 'mlm+sop'):
      raise ValueError(f"objective {name!r}: expected 'mlm', 'mlm+nsp' or 'mlm+sop'")
  task_names = specs.items(config.tasks, what='tasks')
  for name in task_names:
    tasks_lib.get_task(name)  # raises naming the registered tasks
  seeds = specs.items(config.seeds, int, what='seeds')
  if not objectives or not task_names or not seeds:
    raise ValueError('objectives, tasks and seeds must each name at least one')
  return objectives, task_names, seeds


def pretrain_config(config, objective: str):
  """The pre-training run of one objective: everything else shared."""
  c = trainer_schema.pretraining_defaults(config.corpus, objective)
  c.model, c.scratch, c.seed = config.model, config.scratch, config.seed
  c.corpus.max_documents = config.max_documents
  c.corpus.dev_sequences = config.dev_sequences
  c.max_length = c.pad_multiple = config.max_length
  c.batch_size = config.pretrain_batch
  c.total_steps = config.pretrain_steps
  c.eval_every = c.checkpoint_every = max(1, config.pretrain_steps // 4)
  c.log_every = max(1, min(50, config.pretrain_steps // 10))
  c.optimizer.learning_rate = config.pretrain_lr
  return c


def finetune_config(config, run: str, task: str, seed: int):
  """The fine-tune of pre-trained `run` on `task` with `seed` (the family recipe)."""
  c = trainer_schema.trainer_defaults()
  c.task = task
  c.init_from = f'{run}:best'
  c.data_dir = config.data_dir
  c.seed = seed
  c.num_epochs = config.finetune_epochs
  c.train_examples = config.finetune_examples
  c.optimizer.learning_rate = config.finetune_lr
  c.pooling = config.pooling
  c.log_every = 50
  return c


def _pretrain_row(objective):
  def make_row(result):
    if 'diverged' in result:
      return {'objective': objective, 'diverged': result['diverged']}
    return {'objective': objective, **{k: float(v) for k, v in result['final'].items()}}
  return make_row


def _finetune_row(objective, task, seed):
  def make_row(result):
    row = {'objective': objective, 'task': task, 'seed': seed}
    if 'diverged' in result:
      return {**row, 'score': float('nan'), 'diverged': result['diverged']}
    return {**row, 'metric': result['main_metric'],
            'score': float(result['final'][result['main_metric']])}
  return make_row


def summarise(rows: Sequence[dict], objectives: Sequence[str],
              task_names: Sequence[str]) -> dict[str, dict[str, dict]]:
  """{task: {objective: {'mean', 'std', 'scores', 'diff' (vs the first objective),
  'beyond_noise' (|diff| > the larger seed std of the two)}}}."""
  out = {}
  for task in task_names:
    out[task] = {}
    for objective in objectives:
      scores = [r['score'] for r in rows if r['task'] == task and r['objective'] == objective]
      std = statistics.stdev(scores) if len(scores) > 1 else float('nan')
      out[task][objective] = {'scores': scores, 'mean': statistics.fmean(scores), 'std': std}
    base = out[task][objectives[0]]
    for objective in objectives:
      entry = out[task][objective]
      entry['diff'] = entry['mean'] - base['mean']
      noise = max(entry['std'], base['std'])
      entry['beyond_noise'] = bool(noise == noise and abs(entry['diff']) > noise)
  return out


def markdown_table(summary, objectives, task_names, pretrain_rows) -> str:
  head = '| objective | pre-training dev MLM acc (%) |' + ''.join(
      f' {t} mean ± std (diff vs {objectives[0]}) |' for t in task_names)
  lines = [head, '|---|---:|' + '---:|' * len(task_names)]
  for objective in objectives:
    mlm = pretrain_rows[objective].get('mlm_accuracy', float('nan'))
    cells = [objective, f'{mlm:.2f}']
    for task in task_names:
      e = summary[task][objective]
      mark = ' *' if e['beyond_noise'] and objective != objectives[0] else ''
      cells.append(f'{e["mean"]:.2f} ± {e["std"]:.2f} ({e["diff"]:+.2f}{mark})')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return ('\n'.join(lines) + '\n\n* = the difference exceeds the larger seed standard '
          'deviation of the two objectives.\n')


def run(config, out: str, command: str = '') -> dict[str, Any]:
  objectives, task_names, seeds = check(config)
  os.makedirs(out, exist_ok=True)
  pretrain_rows, rows = {}, []
  for objective in objectives:
    name = objective.replace('+', '_')
    run_dir = os.path.join(out, f'pretrain_{name}')
    pretrain_rows[objective] = study.run_or_reuse(
        pretrain_config(config, objective), run_dir, _pretrain_row(objective))
    if 'diverged' in pretrain_rows[objective]:
      raise FloatingPointError(f'pre-training with {objective} diverged: '
                               f'{pretrain_rows[objective]["diverged"]}')
    for task in task_names:
      for seed in seeds:
        rows.append(study.run_or_reuse(
            finetune_config(config, run_dir, task, seed),
            os.path.join(out, name, f'{task}_s{seed}'), _finetune_row(objective, task, seed),
            keep=config.keep_workdirs))
        logging.info('%s', rows[-1])
  summary = summarise(rows, objectives, task_names)
  source = 'from scratch (' + config.scratch + ')' if config.scratch else f'{config.model} continued'
  title = (f'Pre-training objective ablation: {source}, {config.corpus}, '
           f'{config.pretrain_steps} steps of {config.pretrain_batch} x {config.max_length}; '
           f'fine-tuned {config.finetune_epochs} epoch(s), seeds {seeds}')
  table = markdown_table(summary, objectives, task_names, pretrain_rows)
  result = {'config': config.to_dict(), 'pretrain': pretrain_rows, 'rows': rows,
            'summary': summary, 'command': command}
  return study.write_results(out, title, table, result, {
      'benchmark': 'pretrain_ablation',
      **{f'{task}_{objective}': summary[task][objective]['scores']
         for task in task_names for objective in objectives}})
