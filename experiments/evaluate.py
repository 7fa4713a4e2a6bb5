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
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
import orbax.checkpoint as ocp

from research.checkpoints import load_pretrained, load_tokenizer
from research.data import tasks
from research.models.heads import predictions
from research.train import evaluation
from research.train.trainer import build_model, load_split


def _define_flags():
  # Defined when run as a script only, so importing this module (tests, notebooks) does
  # not clash with experiments.main's --workdir / --config.
  flags.DEFINE_multi_string('workdir', None, 'A run folder (repeat for several).')
  config_flags.DEFINE_config_file('config', None, 'Config for workdirs without config.json.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to score.')
  flags.DEFINE_string('split', None, "Split to score (default: the config's eval_split).")
  flags.DEFINE_string('out', None, 'Optional JSON file for the results.')
  flags.mark_flags_as_required(['workdir'])


def run_config(workdir: str, fallback=None) -> ml_collections.ConfigDict:
  """The config a run was trained with: its config.json, else `fallback`."""
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  if fallback is None:
    raise FileNotFoundError(f'{path} does not exist (runs from before the trainer saved its '
                            'config); pass --config with the config the run used')
  return fallback


def checkpoint_params(workdir: str, which: str = 'best'):
  """(params, step) from a run's best or latest checkpoint (the EMA if it has one)."""
  folder = os.path.join(workdir, 'best' if which == 'best' else 'checkpoints')
  steps = sorted(int(s) for s in os.listdir(folder) if s.isdigit()) if os.path.isdir(folder) else []
  if not steps:
    raise FileNotFoundError(f'No {which} checkpoint in {folder}')
  state = ocp.StandardCheckpointer().restore(os.path.join(folder, str(steps[-1]), 'state'))
  if which == 'latest':
    state = state.get('ema', state['params'])
  return state, steps[-1]


def score_runs(workdirs: list[str], which: str = 'best', split: str | None = None,
               fallback_config=None) -> dict:
  """Per-run scores and, for two or more runs, the score of their averaged outputs."""
  results, outputs, first = {'runs': {}}, [], None
  for workdir in workdirs:
    config = run_config(workdir, fallback_config)
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
    tokenizer = load_tokenizer(config.model)
    examples, features = load_split(config, spec, tokenizer, run_split, config.eval_examples)
    encoder_config, _ = load_pretrained(config.model, dtype=config.dtype)
    model = build_model(config, spec, encoder_config)
    params, step = checkpoint_params(workdir, which)

    @jax.jit
    def forward(batch, params=params, model=model):
      logits = model.apply({'params': params}, batch['input_ids'], batch['attention_mask'],
                           batch.get('token_type_ids'), deterministic=True)[0]
      if spec.kind == 'classification':
        return jax.nn.softmax(logits, -1)
      return logits if pooled else predictions(spec.kind, logits)

    out = evaluation.gather_predictions(forward, features, config.eval_batch_size,
                                        config.max_length, config.pad_multiple)
    if pooled:
      out = np.stack(out)
      outputs.append(out)
    results['runs'][workdir] = {'step': step, **evaluation.score(
        spec, examples, features, _predict(spec, out) if pooled else out)}
    print(f'{workdir} ({which}, step {step}): {_fmt(results["runs"][workdir])}')
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
  logging.getLogger('absl').setLevel(logging.WARNING)  # orbax logs every file it reads
  f = flags.FLAGS
  results = score_runs([os.path.abspath(w) for w in f.workdir], f.checkpoint, f.split, f.config)
  if f.out:
    with open(f.out, 'w') as out:
      json.dump(results, out, indent=2)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
