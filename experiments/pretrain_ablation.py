r"""NSP / SOP / MLM-only ablation: pre-train with each objective, fine-tune on pair tasks.

    python -m experiments.pretrain_ablation --out runs/pretrain_ablation \
        --config experiments/configs/pretrain_ablation.py

See experiments/configs/pretrain_ablation.py. Runs go to out/pretrain_<objective> and
out/<objective>/<task>_s<seed>; each keeps its row and is reused when the study is
rerun with the same settings (experiments/study_runs.py). Writes results.md and
results.json to --out and ends by printing one JSON line.
"""
from __future__ import annotations

import logging
import os
import statistics
from typing import Any, Sequence

from absl import app, flags
from ml_collections import config_flags

from experiments import study_runs
from experiments.configs import glue, pretrain
from research.data import tasks as tasks_lib


def _define_flags():
  config_flags.DEFINE_config_file('config', None,
                                  'experiments/configs/pretrain_ablation.py[:args]')
  flags.DEFINE_string('out', 'runs/pretrain_ablation', 'Folder for results and runs.')
  flags.mark_flags_as_required(['config'])


def _names(text: str) -> list[str]:
  return [x for x in text.split(',') if x]


def check(config) -> tuple[list[str], list[str], list[int]]:
  """(objectives, tasks, seeds), validated before the first run."""
  objectives = _names(config.objectives)
  for name in objectives:
    if name not in ('mlm', 'mlm+nsp', 'mlm+sop'):
      raise ValueError(f"objective {name!r}: expected 'mlm', 'mlm+nsp' or 'mlm+sop'")
  task_names = _names(config.tasks)
  for name in task_names:
    tasks_lib.get_task(name)  # raises naming the registered tasks
  seeds = [int(s) for s in _names(config.seeds)]
  if not objectives or not task_names or not seeds:
    raise ValueError('objectives, tasks and seeds must each name at least one')
  return objectives, task_names, seeds


def pretrain_config(config, objective: str):
  """The pre-training run of one objective: everything else shared."""
  c = pretrain.get_config(f'corpus={config.corpus},objective={objective}')
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
  c = glue.get_config(f'task={task}')
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
    pretrain_rows[objective] = study_runs.run_or_reuse(
        pretrain_config(config, objective), run_dir, _pretrain_row(objective))
    if 'diverged' in pretrain_rows[objective]:
      raise FloatingPointError(f'pre-training with {objective} diverged: '
                               f'{pretrain_rows[objective]["diverged"]}')
    for task in task_names:
      for seed in seeds:
        rows.append(study_runs.run_or_reuse(
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
  study_runs.write_results(out, title, table, result, {
      'benchmark': 'pretrain_ablation',
      **{f'{task}_{objective}': summary[task][objective]['scores']
         for task in task_names for objective in objectives}})
  return result


def main(argv):
  del argv
  study_runs.main_from_flags(run, 'experiments.pretrain_ablation')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
