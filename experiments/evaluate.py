r"""Scores saved runs on their task's dev split; given several runs, also their ensemble.

    python -m experiments.evaluate --workdir runs/sst2_a --workdir runs/sst2_b
    python -m experiments.evaluate --workdir runs/mrpc --checkpoint latest --split validation

Each workdir's `config.json` (written by the trainer) says which model, task, head and
data to rebuild; for a workdir without one, pass the config the run was started with
(`--config experiments/configs/glue.py:task=sst2 --config.max_length=64`). The default
checkpoint is the run's best (`best/`); `--checkpoint latest` takes the newest
`checkpoints/<step>`, using its parameter average when the run kept one (`ema_decay`).

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

from research.checkpoints import load_tokenizer
from research.data import tasks
from research.train import evaluation, saved_runs
from research.train.trainer import load_split


def _define_flags():
  # Defined when run as a script only, so importing this module (tests, notebooks) does
  # not clash with experiments.main's --workdir / --config.
  flags.DEFINE_multi_string('workdir', None, 'A run folder (repeat for several).')
  config_flags.DEFINE_config_file('config', None, 'Config for workdirs without config.json.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to score.')
  flags.DEFINE_string('split', None, "Split to score (default: the config's eval_split).")
  flags.DEFINE_string('out', None, 'Optional JSON file for the results.')
  flags.mark_flags_as_required(['workdir'])


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
    pooled = spec.kind in ('classification', 'regression')
    if len(workdirs) > 1 and not pooled:
      raise ValueError(f'Ensembling {spec.kind} tasks is not supported; score one run at a time')
    run = saved_runs.load_run(workdir, which, config)
    examples, features = load_split(config, spec, load_tokenizer(config.model), run_split,
                                    config.eval_examples)
    out = saved_runs.run_outputs(run, features)
    if pooled:
      outputs.append(out)
    results['runs'][workdir] = {'step': run.step, **evaluation.score(
        spec, examples, features, _predict(spec, out) if pooled else out)}
    print(f'{workdir} ({which}, step {run.step}): {_fmt(results["runs"][workdir])}')
  if len(outputs) > 1:
    spec = first[0]
    results['ensemble'] = evaluation.score(spec, examples, features,
                                           _predict(spec, np.mean(outputs, 0)))
    print(f'ensemble of {len(outputs)} (mean of outputs): {_fmt(results["ensemble"])}')
  return results


def _predict(spec, out: np.ndarray) -> list:
  return list(out.argmax(-1)) if spec.kind == 'classification' else list(out)


def _fmt(scores: dict) -> str:
  return ', '.join(f'{k} {v:.2f}' for k, v in scores.items() if k != 'step')


def main(argv):
  del argv
  # orbax logs every file it reads, and warns that the run folders are opened read-only.
  logging.getLogger('absl').setLevel(logging.ERROR)
  f = flags.FLAGS
  results = score_runs([os.path.abspath(w) for w in f.workdir], f.checkpoint, f.split, f.config)
  if f.out:
    with open(f.out, 'w') as out:
      json.dump(results, out, indent=2)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
