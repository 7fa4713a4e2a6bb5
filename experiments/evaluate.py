r"""Scores saved runs on their task's dev split; given several runs, also their ensemble.

    python -m experiments.evaluate --workdir runs/sst2_a --workdir runs/sst2_b
    python -m experiments.evaluate --workdir runs/mrpc --checkpoint latest --split validation
    python -m experiments.evaluate --hf_model some-org/bert-sst2 --task sst2   # a Hub model

Each workdir's `config.json` (written by the trainer) says which model, task, head and
data to rebuild; for a workdir without one, pass the config the run was started with
(`--config experiments/configs/glue.py:task=sst2 --config.max_length=64`). The default
checkpoint is the run's best (`best/`); `--checkpoint latest` takes the newest
`checkpoints/<step>`, using its parameter average when the run kept one (`ema_decay`).

`--hf_model` scores a fine-tuned Hugging Face classifier, tagger or QA folder (or Hub id)
with its own head on `--task`'s split, its labels mapped to the task's by name.

The ensemble averages class probabilities (classification) or predicted scores
(regression) over the runs, which must share the task and the split. Results are
printed and, with `--out FILE`, written as JSON.
"""
from __future__ import annotations

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from research import objectives
from research.data import tasks
from research.train import saved_runs
from research.train.build import load_split


def _define_flags():
  # Defined when run as a script only, so importing this module (tests, notebooks) does
  # not clash with experiments.main's --workdir / --config.
  flags.DEFINE_multi_string('workdir', None, 'A run folder (repeat for several).')
  flags.DEFINE_string('hf_model', None, 'A fine-tuned Hugging Face folder or Hub id instead.')
  flags.DEFINE_string('task', 'sst2', 'With --hf_model: the task to score it on.')
  flags.DEFINE_string('data_dir', None, 'With --hf_model: the data folder (default: '
                      '$RESEARCH_DATA_DIR or ../shared/data).')
  config_flags.DEFINE_config_file('config', None, 'Config for workdirs without config.json.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to score.')
  flags.DEFINE_string('split', None, "Split to score (default: the config's eval_split).")
  flags.DEFINE_string('out', None, 'Optional JSON file for the results.')
  flags.register_validator('workdir', lambda w: bool(w) != bool(flags.FLAGS.hf_model),
                           message='give --workdir (one or more) or --hf_model')


def score_runs(workdirs: list[str], which: str = 'best', split: str | None = None,
               fallback_config=None) -> dict:
  """Per-run scores and, for two or more runs, the score of their averaged outputs."""
  results, outputs, first = {'runs': {}}, [], None
  for workdir in workdirs:
    try:
      config = saved_runs.run_config(workdir, fallback_config)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'{e}: --config FILE[:args] [--config.field=value ...]') from e
    spec = tasks.get_task(config.task)
    run_split = split or config.eval_split
    if first is None:
      first = (spec, run_split)
    elif (spec.name, run_split) != (first[0].name, first[1]):
      raise ValueError(f'{workdir} is {spec.name}/{run_split}, the first run '
                       f'{first[0].name}/{first[1]}: an ensemble needs one task and split')
    # Refused before any data or weights are read.
    if len(workdirs) > 1 and not objectives.KINDS[spec.kind].supports_ensemble:
      raise ValueError(f'Ensembling {spec.kind} tasks is not supported; score one run at a time')
    run = saved_runs.load_run(workdir, which, config)
    objective = run.objective
    examples, features = load_split(config, spec, saved_runs.run_tokenizer(workdir, config),
                                    run_split, config.eval_examples)
    out = saved_runs.run_outputs(run, features)
    predictions = out
    if objective.supports_ensemble:
      outputs.append(out)
      predictions = objective.predictions_from(out)
    results['runs'][workdir] = {'step': run.step, **objective.score(
        spec, examples, features, predictions)}
    print(f'{workdir} ({which}, step {run.step}): {_fmt(results["runs"][workdir])}')
  if len(outputs) > 1:
    results['ensemble'] = objective.score(first[0], examples, features,
                                          objective.predictions_from(np.mean(outputs, 0)))
    print(f'ensemble of {len(outputs)} (mean of outputs): {_fmt(results["ensemble"])}')
  return results


def score_hf_model(name: str, task: str, split: str = 'validation', data_dir: str | None = None,
                   limit: int = 0) -> dict:
  """Scores a fine-tuned Hugging Face model (with its own head) on a task's split."""
  from research.checkpoints import hf_heads, load_tokenizer  # pylint: disable=g-import-not-at-top
  from research.data.sources import default_data_dir  # pylint: disable=g-import-not-at-top
  from research.train import evaluation  # pylint: disable=g-import-not-at-top
  from research.train.defaults import trainer_defaults  # pylint: disable=g-import-not-at-top
  spec = tasks.get_task(task)
  model, params, labels = hf_heads.load_task_model(name)
  if model.objective.kind != spec.kind:
    raise ValueError(f'{name} is a {model.objective.kind} model, {task} a {spec.kind} task')
  if spec.label_names:
    params = hf_heads.reorder_labels(params, labels, spec.label_names)
  config = trainer_defaults()
  config.task = task
  config.data_dir = data_dir if data_dir is not None else default_data_dir(
      'glue' if spec.columns else '')
  examples, features = load_split(config, spec, load_tokenizer(name), split, limit)
  scores = evaluation.evaluate(model, params, spec, examples, features,
                               batch_size=config.eval_batch_size,
                               max_length=config.max_length, pad_multiple=config.pad_multiple)
  print(f'{name} on {task}/{split}: {_fmt(scores)}')
  return scores


def _fmt(scores: dict) -> str:
  return ', '.join(f'{k} {v:.2f}' for k, v in scores.items() if k != 'step')


def main(argv):
  del argv
  # orbax logs every file it reads, and warns that the run folders are opened read-only.
  logging.getLogger('absl').setLevel(logging.ERROR)
  f = flags.FLAGS
  if f.hf_model:
    results = score_hf_model(f.hf_model, f.task, f.split or 'validation', f.data_dir)
  else:
    results = score_runs([os.path.abspath(w) for w in f.workdir], f.checkpoint, f.split,
                         f.config)
  if f.out:
    with open(f.out, 'w') as out:
      json.dump(results, out, indent=2)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
