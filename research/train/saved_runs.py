"""Finished (or running) training runs as usable models: config, task model and params.

    run = load_run('runs/sst2_a', which='latest')
    probs = run_outputs(run, features)        # [n, classes] probabilities

Used by `experiments/evaluate.py` (re-scoring, ensembles) and by the trainer to turn
saved runs into distillation teachers. Nothing here writes to a workdir.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from research.checkpoints import hub
from research.checkpoints.hf_load import read_config
from research.data import tasks
from research.models.heads import TaskModel, predictions
from research.train import evaluation


@dataclasses.dataclass(frozen=True)
class SavedRun:
  """A run folder's config, task, rebuilt model and restored params."""
  workdir: str
  config: ml_collections.ConfigDict
  spec: tasks.TaskSpec
  model: TaskModel
  params: Any
  step: int


def run_config(workdir: str, fallback=None) -> ml_collections.ConfigDict:
  """The config a run was trained with: its config.json, else `fallback`."""
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  if fallback is None:
    raise FileNotFoundError(f'{path} does not exist (runs from before the trainer saved its '
                            'config); pass the config the run was started with')
  return fallback


def _manager(workdir: str, which: str) -> ocp.CheckpointManager:
  if which not in ('best', 'latest'):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  folder = os.path.join(os.path.abspath(workdir), 'best' if which == 'best' else 'checkpoints')
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'No {which} checkpoint in {workdir}: {folder} does not exist')
  return ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0))


def _latest_step(manager: ocp.CheckpointManager, workdir: str, which: str) -> int:
  step = manager.latest_step()  # the best folder keeps only the best step
  if step is None:
    raise FileNotFoundError(f'No {which} checkpoint in {workdir}')
  return int(step)


def checkpoint_step(workdir: str, which: str = 'best') -> int:
  """The step of a run's best or latest checkpoint, without reading it."""
  manager = _manager(workdir, which)
  try:
    return _latest_step(manager, workdir, which)
  finally:
    manager.close()


def restore_params(workdir: str, which: str = 'best') -> tuple[Any, int]:
  """(params, step) of a run's best or latest checkpoint (its EMA if it kept one)."""
  manager = _manager(workdir, which)
  try:
    step = _latest_step(manager, workdir, which)
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))['state']
  finally:
    manager.close()
  if which == 'latest':
    state = state.get('ema', state['params'])
  return state, step


def load_run(workdir: str, which: str = 'best', fallback_config=None) -> SavedRun:
  """Rebuilds a run's task model and restores its params (no pre-trained weights read).

  Args:
    workdir: the run folder (with `config.json`, `checkpoints/`, `best/`).
    which: 'best' (highest dev score) or 'latest' (the newest train state).
    fallback_config: the config to use when the folder has no `config.json`.

  Returns:
    A `SavedRun`.
  """
  # Imported here: the trainer imports this module (teachers), and build_model lives there.
  from research.train.trainer import build_model  # pylint: disable=g-import-not-at-top
  config = run_config(workdir, fallback_config)
  spec = tasks.get_task(config.task)
  params, step = restore_params(workdir, which)
  # The architecture comes from the checkpoint's config.json; whether it has a pooler
  # comes from the saved params themselves, so the pre-trained weights are not read.
  encoder_config, _ = read_config(hub.resolve(config.model), dtype=config.dtype)
  encoder_config = encoder_config.replace(use_pooler='pooler' in params['encoder'])
  return SavedRun(os.path.abspath(workdir), config, spec,
                  build_model(config, spec, encoder_config), params, step)


def run_outputs(run: SavedRun, features: list, batch_size: int | None = None,
                max_length: int | None = None, pad_multiple: int | None = None) -> Any:
  """The run's outputs on `features`, one per feature, in order.

  Batching defaults to the run's own config; pass the features' `max_length` and
  `pad_multiple` when they were encoded under another config (a student's).

  Returns class probabilities [n, classes] for classification and scores [n] for
  regression (both numpy, so runs can be averaged); tagging and span runs return what
  their scorer takes (a list of per-feature tag ids or start/end logits).
  """
  kind = run.spec.kind

  @jax.jit
  def forward(batch):
    logits = run.model.apply({'params': run.params}, batch['input_ids'],
                             batch['attention_mask'], batch.get('token_type_ids'),
                             deterministic=True)[0]
    if kind == 'classification':
      return jax.nn.softmax(logits, -1)
    return logits if kind == 'regression' else predictions(kind, logits)

  out = evaluation.gather_predictions(
      forward, features, batch_size or run.config.eval_batch_size,
      max_length or run.config.max_length, pad_multiple or run.config.pad_multiple)
  return np.stack(out) if kind in ('classification', 'regression') else out
