"""Scores saved runs on their task's split, their ensemble, and Hugging Face classifiers.

    results = score_runs(['runs/sst2_a', 'runs/sst2_b'])      # each run and their ensemble
    scores = score_hf_model('some-org/bert-sst2', 'sst2')      # a fine-tuned HF folder / id

Each run's `config.json` says which model, task, head and data to rebuild; for a run
without one, pass the config it was started with (`fallback_config`). 'best' is the
run's best checkpoint; 'latest' its newest train state (its parameter average when the
run kept one). The ensemble averages class probabilities (classification) or predicted
scores (regression) over the runs, which must share the task and the split. A Hugging
Face model is scored with its own head, its labels mapped to the task's by name.
"""
from __future__ import annotations

import numpy as np

from research import objectives
from research.checkpoints import hf_heads, load_tokenizer
from research.data import tasks
from research.data.sources import default_data_dir
from research.train import evaluation, saved_runs
from research.train.build import load_split
from research.train.defaults import trainer_defaults


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
  if len(outputs) > 1:
    results['ensemble'] = objective.score(first[0], examples, features,
                                          objective.predictions_from(np.mean(outputs, 0)))
  return results


def score_hf_model(name: str, task: str, split: str = 'validation', data_dir: str | None = None,
                   limit: int = 0, label_names=None, num_labels: int | None = None) -> dict:
  """Scores a fine-tuned Hugging Face model (with its own head) on a task's split;
  `label_names` / `num_labels` name its outputs when its config's id2label does not
  match its classifier (`hf_heads.load_task_model`)."""
  spec = tasks.get_task(task)
  model, params, labels = hf_heads.load_task_model(name, label_names=label_names,
                                                   num_labels=num_labels)
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
  return scores


def format_scores(scores: dict) -> str:
  """'accuracy 91.20, f1 88.00' (the step left out)."""
  return ', '.join(f'{k} {v:.2f}' for k, v in scores.items() if k != 'step')
