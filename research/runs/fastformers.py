"""FastFormers-style compression of a fine-tuned run (Kim & Awadalla 2020), as a chain of runs.

    report = compress(defaults(), 'runs/sst2_main:best', 'runs/sst2_main/compressed')

Stages, each a run folder under the workdir that the next starts from (`init_from`):
  1. dynamic sequence length: each batch padded to its own longest sentence instead of
     `max_length` (measured on the teacher; every later model also runs this way);
  2. distillation into each student (`students`): initialised from teacher layers
     (`student_init.select_layers`, optionally narrowed to the most important heads,
     FFN units and hidden coordinates, `narrow.ranked_width`, or the leading ones),
     trained with the frozen teacher in the step (soft targets + hidden states);
  3. structured pruning of heads and FFN neurons by importance (Michel et al. 2019),
     physically removed, then a short distillation recovery (no pruning when both
     fractions are 0: the distilled student goes to int8);
  4. int8 post-training quantization (static activation scales, int8 x int8 -> int32).
A rerun skips finished stages and resumes a killed training stage from its checkpoint.
The report: dev accuracy, parameters, bytes on disk, sequences/s at each batch size on
the dev sentences, speed-ups against the teacher and against transformers + PyTorch
running the teacher, each stage's own speed-up; `pipeline.json` and `pareto.png` in
the workdir.
"""
from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from research import distributed, specs
from research.evaluate import plots
from research.runs import measure as measure_lib
from research.runs import prune as prune_lib
from research.runs import run_data, transform
from research.train import defaults as trainer_schema
from research.train import saved_runs, techniques
from research.train import student as student_spec
from research.train.trainer import train_and_evaluate

STUDENT_KEYS = student_spec.KEYS
STAGES = ('init', 'distilled', 'pruned', 'recovered', 'int8')


def defaults() -> ml_collections.ConfigDict:
  """The pipeline's config schema (experiments/configs/fastformers.py adds variants)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Students, ';'-separated; each `layers=<teacher layers>` with optional `heads=`,
  # `ffn=`, `hidden=` (the kept layers' most important heads / units / coordinates,
  # scored on prune.importance_examples train examples; `order=leading` keeps the
  # leading ones instead; transforms/narrow.py).
  # The default recipe is the best measured (docs/results.md, issue 29): the teacher's
  # layers 1, 3, 5 distilled, then 60 % of its heads and FFN units pruned by importance
  # and 2,400 recovery steps, then int8: on SST-2 99.2 % of the teacher at 5.8x (b1) /
  # 12.9x (b32) its sequences/s; narrower students kept <= 96.4 %.
  c.students = 'layers=1,3,5'
  # Distillation: frozen teacher in the step, soft targets (alpha, temperature) and
  # TinyBERT hidden-state MSE on uniformly mapped layers.
  c.distill = ml_collections.ConfigDict({
      'steps': 1200, 'learning_rate': 1e-4, 'alpha': 0.9, 'temperature': 2.0,
      'hidden_weight': 1.0, 'attention_weight': 0.0, 'layer_map': 'uniform'})
  # Structured pruning of each distilled student; recovery = distillation steps after.
  # Both fractions 0: no pruning stage (the distilled student goes to int8).
  c.prune = ml_collections.ConfigDict({
      'heads_fraction': 0.6, 'ffn_fraction': 0.6, 'importance_examples': 512,
      'recovery_steps': 2400})
  c.quantize = ml_collections.ConfigDict({'calibration': 'max', 'examples': 512})
  # Speed: dev sentences timed (0 = all), batch sizes, alternated rounds, and whether
  # transformers + PyTorch runs the teacher as well.
  c.speed = ml_collections.ConfigDict({
      'sentences': 0, 'batch_sizes': '1,32', 'rounds': 3, 'torch': True})
  c.eval_examples = 0  # dev examples scored (0 = all)
  # Train data of the distillation and recovery stages ('' = the teacher run's): e.g. a
  # TinyBERT-augmented folder from experiments/augment.py (its dev split is the task's).
  c.data_dir = ''
  return c


def parse_student(spec: str) -> dict[str, str]:
  """'layers=1,3,5 hidden=256 heads=8' -> {'layers': '1,3,5', ...} (the trainer's
  `config.student` spec, `research/train/student.py`); a student here names its layers."""
  fields = student_spec.parse(spec)
  if 'layers' not in fields:
    raise ValueError(f'student {spec!r} names no teacher layers (layers=1,3,5)')
  return fields


def students(pipeline) -> dict[str, dict[str, str]]:
  """name -> fields, e.g. 'L3' for layers=1,3,5 ('L3_h256' when narrowed, by importance;
  'L3_h256_leading' keeping the leading ones)."""
  out = {}
  for spec in specs.items(pipeline.students, sep=';', what='students'):
    fields = parse_student(spec)
    name = f'L{len(fields["layers"].split(","))}' + ''.join(
        f'_{k[0]}{fields[k]}' for k in ('heads', 'ffn', 'hidden') if k in fields)
    if fields.get('order') == 'leading':
      name += '_leading'
    out[name] = fields
  if not out:
    raise ValueError('config.students names no student')
  return out


def train_config(teacher_config, pipeline, init_from: str, teacher_ref: str, steps: int):
  """The student's trainer config: the teacher's recipe with every technique off (a
  student inherits no QAT, sparsity or average), distillation in the step."""
  teacher, which = saved_runs.parse_ref(teacher_ref)
  c = trainer_schema.reset_techniques(teacher_config, techniques.config_keys())
  c.init_from, c.seed = init_from, pipeline.seed
  c.total_steps, c.num_epochs = steps, 0
  c.eval_every = c.checkpoint_every = steps
  if pipeline.eval_examples:
    c.eval_examples = pipeline.eval_examples
  if pipeline.data_dir:
    c.data_dir = pipeline.data_dir
  d = pipeline.distill
  c.optimizer.learning_rate = d.learning_rate
  c.distill.teachers, c.distill.mode, c.distill.checkpoint = teacher, 'in_step', which
  c.distill.alpha, c.distill.temperature = d.alpha, d.temperature
  c.distill.hidden_weight, c.distill.attention_weight = d.hidden_weight, d.attention_weight
  c.distill.layer_map = d.layer_map
  return c


def _done(folder: str) -> bool:
  return os.path.isdir(os.path.join(folder, 'best'))


def _student_init(teacher_ref: str, fields: dict, folder: str, importance_examples: int) -> str:
  """The student's starting run (teacher layers, narrowed when asked); made once."""
  narrowed = folder + '_narrow'
  wants_narrow = any(k in fields for k in ('heads', 'ffn', 'hidden'))
  if not _done(folder):
    distributed.on_primary('fastformers/init', transform.transform_run, teacher_ref, folder,
                           'select_layers', layers=fields['layers'])
  if wants_narrow and not _done(narrowed):
    as_int = lambda key: int(fields[key]) if key in fields else None
    distributed.on_primary('fastformers/narrow', transform.transform_run, folder, narrowed,
                           'truncate_width', num_heads=as_int('heads'),
                           intermediate_size=as_int('ffn'), hidden_size=as_int('hidden'),
                           order=fields.get('order', 'importance'),
                           importance_examples=importance_examples)
  return narrowed if wants_narrow else folder


def run_stages(pipeline, teacher_ref: str, workdir: str) -> dict[str, dict[str, str]]:
  """Runs (or skips, when done) every stage; returns student -> stage -> run folder."""
  teacher = saved_runs.load_run(*saved_runs.parse_ref(teacher_ref))
  if teacher.model.encoder.projections:
    raise ValueError(f'{teacher_ref} is already compressed ({teacher.model.encoder.projections[:2]}'
                     '...); start the pipeline from a float fine-tuned run')
  chains = {}
  p = pipeline.prune
  for name, fields in students(pipeline).items():
    stage = {k: os.path.join(workdir, name, k) for k in STAGES}
    init = _student_init(teacher_ref, fields, stage.pop('init'), p.importance_examples)
    train_and_evaluate(train_config(teacher.config, pipeline, init, teacher_ref,
                                    pipeline.distill.steps), stage['distilled'])
    ran = ['distilled']  # the stages this chain runs, in order; the report follows them
    if p.heads_fraction or p.ffn_fraction:  # both 0: no pruning, distilled -> int8
      if not _done(stage['pruned']):  # single-host stages: process 0 writes the folder
        distributed.on_primary('fastformers/prune', prune_lib.prune_run,
                               f'{stage["distilled"]}:best', stage['pruned'],
                               p.heads_fraction, p.ffn_fraction, p.importance_examples,
                               eval_examples=pipeline.eval_examples or None)
      ran.append('pruned')
      if p.recovery_steps:
        train_and_evaluate(train_config(teacher.config, pipeline, stage['pruned'],
                                        teacher_ref, p.recovery_steps), stage['recovered'])
        ran.append('recovered')
    last = stage[ran[-1]]
    if not _done(stage['int8']):
      distributed.on_primary('fastformers/int8', transform.transform_run, f'{last}:best',
                             stage['int8'], 'ptq', calibration=pipeline.quantize.calibration,
                             calibration_examples=pipeline.quantize.examples)
    chains[name] = {k: stage[k] for k in ran + ['int8']}
  return chains


def stage_speedups(rows: list[dict], chains: dict, batches: list[int]) -> dict[str, Any]:
  """Each stage's own speed-up over the stage before it (FastFormers' table 3)."""
  rate = {r['model']: r for r in rows}
  out = {}
  for name, stage in chains.items():
    before_int8 = f'{name} {[k for k in stage if k != "int8"][-1]}'
    order = [('dynamic length', 'teacher, static length', 'teacher'),
             ('distillation', 'teacher', f'{name} distilled')]
    if 'pruned' in stage:
      order.append(('pruning', f'{name} distilled', before_int8))
    order.append(('int8', before_int8, f'{name} int8'))
    out[name] = {step: {f'b{b}': rate[after][f'seq_s_b{b}'] / rate[before][f'seq_s_b{b}']
                        for b in batches} for step, before, after in order}
  return out


def compress(pipeline, teacher_ref: str, workdir: str) -> dict[str, Any] | None:
  """Every stage, then the measured rows, per-stage speed-ups, `pipeline.json` and
  `pareto.png`; returns the report (with its markdown table). In a job of several
  processes the training stages run on all of them; the report (CPU speed is a
  single-host measure) is made and returned by process 0 only (None elsewhere)."""
  workdir = os.path.abspath(workdir)
  chains = run_stages(pipeline, teacher_ref, workdir)
  return distributed.on_primary('fastformers/report', _report, pipeline, teacher_ref,
                                workdir, chains)


def _report(pipeline, teacher_ref: str, workdir: str, chains: dict) -> dict[str, Any]:
  batches = specs.items(pipeline.speed.batch_sizes, int, what='speed.batch_sizes')
  rows = measure_lib.measure(
      teacher_ref, {f'{name} {key}': path for name, stage in chains.items()
                    for key, path in stage.items()},
      eval_examples=pipeline.eval_examples, sentences=pipeline.speed.sentences,
      batch_sizes=batches, rounds=pipeline.speed.rounds, torch=pipeline.speed.torch)
  metric = run_data.main_metric(teacher_ref)
  plot = plots.pareto(rows, metric, batches[-1], os.path.join(workdir, 'pareto.png'))
  report = {'teacher': teacher_ref, 'metric': metric, 'rows': rows, 'plot': plot,
            'stages': stage_speedups(rows, chains, batches), 'config': pipeline.to_dict(),
            'table': measure_lib.markdown_table(rows, metric, batches)}
  with open(os.path.join(workdir, 'pipeline.json'), 'w') as f:
    json.dump(report, f, indent=2)
  return report
