r"""Compresses a fine-tuned run FastFormers-style and reports accuracy, size and speed.

    python -m experiments.compress --config experiments/configs/fastformers.py:cpu_budget \
        --teacher runs/sst2_main:best --workdir runs/sst2_main/compressed

See experiments/configs/fastformers.py for the stages. Every stage writes a run folder
(`<workdir>/<student>/{init,distilled,pruned,recovered,int8}`) that the next starts
from (`init_from`), so any of them can be evaluated, exported or fine-tuned further; a
rerun skips finished stages and resumes a killed training stage from its checkpoint.
Prints a table, writes `<workdir>/pipeline.json` and `<workdir>/pareto.png`, and ends
with one JSON line of the figures.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Callable

from absl import app, flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments.prune import prune_run
from experiments.transform import transform_run
from research.checkpoints import hf_export
from research.evaluate import speed
from research.train import evaluation, saved_runs
from research.train.build import load_split
from research.train.defaults import trainer_defaults
from research.train.trainer import train_and_evaluate

STUDENT_KEYS = ('layers', 'heads', 'ffn', 'hidden')


def parse_student(spec: str) -> dict[str, str]:
  """'layers=1,3,5 hidden=256 heads=8' -> {'layers': '1,3,5', ...}; unknown keys are errors."""
  fields = {}
  for part in spec.split():
    key, sep, value = part.partition('=')
    if not sep or key not in STUDENT_KEYS:
      raise ValueError(f'student {spec!r}: expected {"/".join(STUDENT_KEYS)}=<value>, '
                       f'got {part!r}')
    fields[key] = value
  if 'layers' not in fields:
    raise ValueError(f'student {spec!r} names no teacher layers (layers=1,3,5)')
  return fields


def students(config) -> dict[str, dict[str, str]]:
  """name -> fields, e.g. 'L3' for layers=1,3,5 ('L3_h256' when narrowed)."""
  out = {}
  for spec in filter(None, (s.strip() for s in config.students.split(';'))):
    fields = parse_student(spec)
    name = f'L{len(fields["layers"].split(","))}' + ''.join(
        f'_{k[0]}{fields[k]}' for k in ('heads', 'ffn', 'hidden') if k in fields)
    out[name] = fields
  if not out:
    raise ValueError('config.students names no student')
  return out


def _done(folder: str) -> bool:
  return os.path.isdir(os.path.join(folder, 'best'))


def train_config(teacher_config, pipeline, init_from: str, teacher_ref: str, steps: int):
  """The student's trainer config: the teacher's recipe, distillation in the step."""
  teacher, which = saved_runs.parse_ref(teacher_ref)
  c = ml_collections.ConfigDict(teacher_config.to_dict())
  _fill_missing(c, trainer_defaults())  # fields added since the teacher ran
  c.init_from = init_from
  c.total_steps, c.num_epochs = steps, 0
  c.eval_every = c.checkpoint_every = steps
  c.ema_decay, c.quant, c.quant_full, c.seed = 0.0, '', False, pipeline.seed
  c.sparsity.target = 0.0
  if pipeline.eval_examples:
    c.eval_examples = pipeline.eval_examples
  d = pipeline.distill
  c.optimizer.learning_rate = d.learning_rate
  c.distill.teachers, c.distill.mode, c.distill.checkpoint = teacher, 'in_step', which
  c.distill.alpha, c.distill.temperature = d.alpha, d.temperature
  c.distill.hidden_weight, c.distill.attention_weight = d.hidden_weight, d.attention_weight
  c.distill.layer_map = d.layer_map
  return c


def _fill_missing(config, defaults) -> None:
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict):
      _fill_missing(config[key], value)


def run_stages(pipeline, teacher_ref: str, workdir: str) -> dict[str, dict[str, str]]:
  """Runs (or skips, when done) every stage; returns student -> stage -> run folder."""
  folder, which = saved_runs.parse_ref(teacher_ref)
  teacher = saved_runs.load_run(folder, which)
  if teacher.model.encoder.projections:
    raise ValueError(f'{teacher_ref} is already compressed ({teacher.model.encoder.projections[:2]}'
                     '...); start the pipeline from a float fine-tuned run')
  chains = {}
  for name, fields in students(pipeline).items():
    base = os.path.join(workdir, name)
    stage = {k: os.path.join(base, k) for k in ('init', 'distilled', 'pruned', 'recovered',
                                                'int8')}
    if not _done(stage['init']):
      transform_run(teacher_ref, stage['init'], 'select_layers', layers=fields['layers'])
      if any(k in fields for k in ('heads', 'ffn', 'hidden')):
        narrow = stage['init'] + '_narrow'
        transform_run(stage['init'], narrow, 'truncate_width',
                      num_heads=int(fields['heads']) if 'heads' in fields else None,
                      intermediate_size=int(fields['ffn']) if 'ffn' in fields else None,
                      hidden_size=int(fields['hidden']) if 'hidden' in fields else None)
        stage['init'] = narrow
    elif os.path.isdir(stage['init'] + '_narrow'):
      stage['init'] = stage['init'] + '_narrow'
    train_and_evaluate(train_config(teacher.config, pipeline, stage['init'], teacher_ref,
                                    pipeline.distill.steps), stage['distilled'])
    p = pipeline.prune
    if not _done(stage['pruned']):
      prune_run(f'{stage["distilled"]}:best', stage['pruned'], p.heads_fraction,
                p.ffn_fraction, p.importance_examples, eval_examples=pipeline.eval_examples or None)
    last = stage['pruned']
    if p.recovery_steps:
      train_and_evaluate(train_config(teacher.config, pipeline, stage['pruned'], teacher_ref,
                                      p.recovery_steps), stage['recovered'])
      last = stage['recovered']
    else:
      del stage['recovered']
    if not _done(stage['int8']):
      transform_run(f'{last}:best', stage['int8'], 'ptq', calibration=pipeline.quantize.calibration,
                    calibration_examples=pipeline.quantize.examples)
    del stage['init']
    chains[name] = stage
  return chains


def torch_runner(encoder_config, encoder_params, threads: int | None = None,
                 dtype: str = 'float32') -> Callable[[dict], Any]:
  """transformers + PyTorch running the same encoder (exported), for reference speeds.

  Only the encoder: a task head is one small matmul. `dtype='bfloat16'` runs under CPU
  autocast, as a PyTorch user would. Needs torch and transformers (test extras).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  with tempfile.TemporaryDirectory() as folder:
    config, params = hf_export.pad_pruned(encoder_config, encoder_params)
    hf_export.export_pretrained(config, params, folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()

  def run(batch):
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16,
                                                enabled=dtype == 'bfloat16'):
      ids = torch.from_numpy(batch['input_ids'].astype(np.int64))
      mask = torch.from_numpy(batch['attention_mask'].astype(np.int64))
      return model(input_ids=ids, attention_mask=mask).last_hidden_state
  return run


def count_params(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def measure(pipeline, teacher_ref: str, named: dict[str, str]) -> list[dict[str, Any]]:
  """One row per model (the teacher and `named`: name -> run folder, best checkpoint):
  dev metric, parameters, bytes on disk, sequences/s per batch size (`pipeline.speed`),
  all on the teacher's dev split and tokenizer."""
  folder, which = saved_runs.parse_ref(teacher_ref)
  runs = {'teacher': saved_runs.load_run(folder, which)}
  for name, path in named.items():
    runs[name] = saved_runs.load_run(*saved_runs.parse_ref(path))
  teacher = runs['teacher']
  config = teacher.config.copy_and_resolve_references()
  tokenizer = saved_runs.run_tokenizer(folder, config)
  examples, features = load_split(config, teacher.spec, tokenizer, config.eval_split,
                                  pipeline.eval_examples)
  metric = teacher.spec.main_metric
  rows = []
  for name, run in runs.items():
    scores = evaluation.evaluate(run.model, run.params, run.spec, examples, features,
                                 batch_size=config.eval_batch_size,
                                 max_length=config.max_length,
                                 pad_multiple=config.pad_multiple)
    rows.append({'model': name, 'workdir': run.workdir, metric: scores[metric],
                 'params': count_params(run.params),
                 'bytes_on_disk': speed.folder_bytes(os.path.join(run.workdir, 'best')),
                 'layers': run.model.encoder.num_layers,
                 'heads': sum(run.model.encoder.heads(i)
                              for i in range(run.model.encoder.num_layers))})
  timed = examples[:pipeline.speed.sentences] if pipeline.speed.sentences else examples
  # Built once for every batch size: each puts its params on the device, and the
  # PyTorch one exports and reloads the teacher.
  runners = {name: speed.runner(run.model, run.params) for name, run in runs.items()}
  runners['teacher, static length'] = runners['teacher']
  if pipeline.speed.torch:
    runners['transformers teacher, static length'] = torch_runner(
        teacher.model.encoder, teacher.params['encoder'])
    runners['transformers teacher'] = runners['transformers teacher, static length']
  for batch in (int(b) for b in pipeline.speed.batch_sizes.split(',')):
    dynamic = speed.length_batches(tokenizer, timed, batch, config.max_length)
    static = speed.length_batches(tokenizer, timed, batch, config.max_length, dynamic=False)
    own = {name: static if 'static length' in name else dynamic for name in runners}
    rates = speed.sequences_per_second(runners, own, pipeline.speed.rounds)
    for row in rows:
      row[f'seq_s_b{batch}'] = rates[row['model']]
    for extra in [n for n in rates if n not in runs]:
      row = next((r for r in rows if r['model'] == extra), None)
      if row is None:
        row = {'model': extra}
        rows.append(row)
      row[f'seq_s_b{batch}'] = rates[extra]
    for row in rows:
      row[f'speedup_b{batch}'] = row[f'seq_s_b{batch}'] / rates['teacher, static length']
      if pipeline.speed.torch:
        row[f'vs_transformers_b{batch}'] = (row[f'seq_s_b{batch}']
                                            / rates['transformers teacher'])
  return rows


def pareto_plot(rows: list[dict], metric: str, batch: int, path: str,
                title: str = 'each stage of the pipeline') -> str:
  """Dev metric against sequences/s (log) and against MB on disk, one point per model."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for ax, key, label in ((axes[0], f'seq_s_b{batch}', f'sequences/s at batch {batch} (log)'),
                         (axes[1], 'bytes_on_disk', 'MB on disk (log)')):
    for row in rows:
      if metric not in row:
        continue
      x = row[key] / (1e6 if key == 'bytes_on_disk' else 1)
      ax.scatter(x, row[metric])
      ax.annotate(row['model'], (x, row[metric]), fontsize=7, xytext=(3, 3),
                  textcoords='offset points')
    ax.set_xscale('log')
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(f'dev {metric}')
  fig.suptitle(f'Accuracy against CPU speed and size, {title}')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def table(rows: list[dict], metric: str, batches: list[int]) -> str:
  head = (f'| model | dev {metric} | params | MB on disk | '
          + ' | '.join(f'seq/s b{b} | x teacher b{b}' for b in batches) + ' |')
  lines = [head, '|' + '---|' * (4 + 2 * len(batches))]
  for r in rows:
    cells = [r['model'], f'{r[metric]:.2f}' if metric in r else '-',
             f'{r["params"] / 1e6:.1f}M' if 'params' in r else '-',
             f'{r["bytes_on_disk"] / 1e6:.1f}' if 'bytes_on_disk' in r else '-']
    for b in batches:
      cells += [f'{r[f"seq_s_b{b}"]:.1f}', f'{r[f"speedup_b{b}"]:.2f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def stage_speedups(rows: list[dict], chains: dict, batches: list[int]) -> dict[str, Any]:
  """Each stage's own speed-up over the stage before it (FastFormers' table 3)."""
  rate = {r['model']: r for r in rows}
  out = {}
  for name, stage in chains.items():
    order = [('dynamic length', 'teacher, static length', 'teacher'),
             ('distillation', 'teacher', f'{name} distilled'),
             ('pruning', f'{name} distilled',
              f'{name} recovered' if 'recovered' in stage else f'{name} pruned'),
             ('int8', f'{name} recovered' if 'recovered' in stage else f'{name} pruned',
              f'{name} int8')]
    out[name] = {step: {f'b{b}': rate[after][f'seq_s_b{b}'] / rate[before][f'seq_s_b{b}']
                        for b in batches} for step, before, after in order}
  return out


def compress(pipeline, teacher_ref: str, workdir: str) -> dict[str, Any]:
  workdir = os.path.abspath(workdir)
  chains = run_stages(pipeline, teacher_ref, workdir)
  rows = measure(pipeline, teacher_ref, {f'{name} {key}': path for name, stage in chains.items()
                                          for key, path in stage.items()})
  folder, _ = saved_runs.parse_ref(teacher_ref)
  metric = saved_runs.load_run(folder).spec.main_metric
  batches = [int(b) for b in pipeline.speed.batch_sizes.split(',')]
  plot = pareto_plot(rows, metric, batches[-1], os.path.join(workdir, 'pareto.png'))
  report = {'teacher': teacher_ref, 'metric': metric, 'rows': rows, 'plot': plot,
            'stages': stage_speedups(rows, chains, batches), 'config': pipeline.to_dict()}
  with open(os.path.join(workdir, 'pipeline.json'), 'w') as f:
    json.dump(report, f, indent=2)
  print(table(rows, metric, batches))
  for name, steps in report['stages'].items():
    print(f'{name} per-stage speed-ups: ' + '; '.join(
        f'{step} ' + ', '.join(f'{v:.2f}x at {b}' for b, v in by.items())
        for step, by in steps.items()))
  return report


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)
  f = flags.FLAGS
  report = compress(f.config, f.teacher, f.workdir)
  print(json.dumps({'benchmark': 'fastformers_pipeline', 'teacher': report['teacher'],
                    'metric': report['metric'], 'stages': report['stages'],
                    'rows': report['rows']}))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Pipeline config file.')
  flags.DEFINE_string('teacher', None, "The fine-tuned run, 'folder[:best]'.")
  flags.DEFINE_string('workdir', None, 'Folder for the stages and the report.')
  flags.mark_flags_as_required(['config', 'teacher', 'workdir'])
  app.run(main)
