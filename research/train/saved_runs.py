"""Run folders as the unit of composition: each holds its own architecture beside its params.

A run folder (the trainer's workdir, or one written by `write_run`) holds

  config.json     the trainer config it was started with
  model.json      the task model's architecture: encoder config (per-layer widths,
                  sharing maps, projection and product rules included), objective and
                  layer mix, so the model is rebuilt without the pre-trained checkpoint
  tokenizer/      the tokenizer files (a run is usable without its source checkpoint)
  checkpoints/    the latest train states; best/ the params of the best evaluation

    run = load_run('runs/sst2_a', which='latest')
    probs = run_outputs(run, features)        # [n, classes] probabilities
    write_run('runs/pruned', run.model.replace(...), new_params, config=run.config)

`--config.init_from=runs/x:best` (or ':latest') starts a new run from a saved one,
whatever its architecture (`init_params`). Nothing here writes to a run folder except
`write_model`, `save_tokenizer` and `write_run`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from research import logs, objectives
from research.checkpoints import hub, load_tokenizer
from research.checkpoints.hf_load import read_config
from research.data import tasks
from research.models import projections
from research.models.config import EncoderConfig
from research.models.heads import TaskModel
from research.train import build, defaults, evaluation
from research.train.checkpointing import (Checkpoints, abstract_on_this_process, fill_empty,
                                          this_process)

MODEL_FILE = 'model.json'
TOKENIZER_DIR = 'tokenizer'
WHICH = ('best', 'latest')
# Leaves only quantized projections hold (`research/transforms/quantize.py`: Int8, Int4).
QUANTIZED_LEAVES = ('qkernel', 'qkernel_int4', 'input_scale')
QUANTIZED_KINDS = ('int8', 'int4')


logs.drop_read_only_notices()  # run folders are opened read-only on purpose


@dataclasses.dataclass(frozen=True)
class SavedRun:
  """A run folder's config, task, rebuilt model and restored params."""
  workdir: str
  config: ml_collections.ConfigDict
  spec: tasks.TaskSpec
  model: TaskModel
  params: Any
  step: int

  @property
  def objective(self):
    return self.model.objective


# -- architecture and tokenizer ----------------------------------------------------

def model_from_dict(values: dict) -> TaskModel:
  """A TaskModel from `TaskModel.to_dict()` data (model.json)."""
  try:
    return TaskModel(EncoderConfig.from_dict(values['encoder']),
                     objectives.from_dict(values['objective']), values.get('layer_mix', 'top'))
  except (KeyError, TypeError) as e:
    raise ValueError(f'Malformed model description ({type(e).__name__}: {e}); expected '
                     "keys 'encoder', 'objective', 'layer_mix'") from e


def write_model(workdir: str, model: TaskModel) -> str:
  """Writes model.json (whole, then renamed); refuses to overwrite another architecture."""
  path = os.path.join(workdir, MODEL_FILE)
  text = json.dumps(model.to_dict(), indent=2, sort_keys=True) + '\n'
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != json.loads(text):
        raise ValueError(f'{path} describes another architecture than this run builds; '
                         'use a fresh workdir (a run folder holds one model)')
    return path
  os.makedirs(workdir, exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
  return path


def read_model(workdir: str) -> TaskModel | None:
  """The run's TaskModel from its model.json, or None for runs that predate it."""
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      values = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e
  try:
    return model_from_dict(values)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from e


def save_tokenizer(workdir: str, tokenizer) -> None:
  """Keeps the run's tokenizer files in `workdir/tokenizer` (once)."""
  folder = os.path.join(workdir, TOKENIZER_DIR)
  if not os.path.isdir(folder):
    tokenizer.save_pretrained(folder + '.tmp')
    os.replace(folder + '.tmp', folder)


def run_tokenizer(workdir: str, config=None):
  """The run's own tokenizer, else the one of the checkpoint its config names."""
  folder = os.path.join(workdir, TOKENIZER_DIR)
  if os.path.isdir(folder):
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    return AutoTokenizer.from_pretrained(folder, use_fast=True)
  config = config if config is not None else run_config(workdir)
  return load_tokenizer(config.model)


# -- checkpoints -------------------------------------------------------------------

def parse_ref(ref: str, default: str = 'best') -> tuple[str, str]:
  """'runs/x:best' -> ('/abs/runs/x', 'best'); a bare folder takes `default`."""
  folder, sep, which = ref.rpartition(':')
  if not sep or which not in WHICH:
    folder, which = ref, default
  if which not in WHICH:
    raise ValueError(f'Run reference {ref!r}: checkpoint must be one of {WHICH}')
  return os.path.abspath(folder), which


def run_config(workdir: str, fallback=None) -> ml_collections.ConfigDict:
  """The config a run was trained with: its config.json, else `fallback`; fields added
  to the schema since the run was written get their defaults (`defaults.complete`)."""
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    try:
      with open(path) as f:
        values = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON: {e}') from e
    return defaults.complete(values, strict=False)
  if fallback is None:
    raise FileNotFoundError(f'{path} does not exist (runs from before the trainer saved its '
                            'config); pass the config the run was started with')
  return defaults.complete(fallback, strict=False)


def _manager(workdir: str, which: str) -> ocp.CheckpointManager:
  if which not in WHICH:
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  folder = os.path.join(os.path.abspath(workdir), 'best' if which == 'best' else 'checkpoints')
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'No {which} checkpoint in {workdir}: {folder} does not exist')
  return ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0,
      multiprocessing_options=this_process()))  # each process reads a run alone


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
    # Laid out on this process's device, whatever devices the run was trained on.
    target = abstract_on_this_process(os.path.join(str(manager.directory), str(step),
                                                   'state'))
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
  finally:
    manager.close()
  if which == 'latest':
    state = state.get('ema', state['params'])
  return state, step


def _quantized_sites(paths) -> list[str]:
  """The sites among flattened encoder param paths that hold int8/int4 storage."""
  return sorted({p.rsplit('/', 1)[0] for p in paths
                 if p.rsplit('/', 1)[-1] in QUANTIZED_LEAVES})


def check_quantized(workdir: str, model: TaskModel | None, params: Any) -> None:
  """Fails, naming the run, where its params are int8/int4 but `model` is float there.

  Flax would only report a missing 'kernel' somewhere inside the encoder at the first
  forward pass; this says that the run is quantized and how to load it.
  """
  flat = flax.traverse_util.flatten_dict(params.get('encoder', params), sep='/')
  rules = model.encoder.projections if model is not None else ()
  # The encoder's sites inside a TaskModel start with 'encoder/' (the rules see that).
  floats = [s for s in _quantized_sites(flat) if projections.kind_at(
      rules, f'encoder/{s}').partition(':')[0] not in QUANTIZED_KINDS]
  if floats:
    raise ValueError(_int8_as_float(workdir, floats, model is None))


def _int8_as_float(where: str, sites: list[str], no_model_file: bool = False) -> str:
  what = (f'{where} holds an int8/int4-quantized run ({len(sites)} quantized '
          f'projection(s), e.g. {sites[:3]}) but ')
  if no_model_file:
    return what + (f'has no {MODEL_FILE}, so only a float model could be rebuilt (from '
                   'config.model); write quantized runs with write_run, which records '
                   'their int8 projections')
  return what + (f'the model is float there; load it with its own {MODEL_FILE} '
                 '(load_run, --config.init_from), or dequantize the params with '
                 'projections.densify and drop the int8 projection rules')


# -- runs as models ------------------------------------------------------------------

def load_run(workdir: str, which: str = 'best', fallback_config=None) -> SavedRun:
  """Rebuilds a run's task model and restores its params (no pre-trained weights read).

  Args:
    workdir: the run folder.
    which: 'best' (highest dev score) or 'latest' (the newest train state).
    fallback_config: the config to use when the folder has no `config.json`.

  Returns:
    A `SavedRun`. The architecture comes from model.json; runs written before it
    existed are rebuilt from their config and the source checkpoint's config.json.
  """
  config = run_config(workdir, fallback_config)
  spec = tasks.get_task(config.task)
  params, step = restore_params(workdir, which)
  model = read_model(workdir)
  check_quantized(workdir, model, params)
  if model is None:
    logging.info('%s has no %s: rebuilding its architecture from %s', workdir, MODEL_FILE,
                 config.model)
    encoder_config, _ = read_config(hub.resolve(config.model), dtype=config.dtype)
    encoder_config = encoder_config.replace(use_pooler='pooler' in params['encoder'])
    model = build.build_model(config, spec, encoder_config)
  return SavedRun(os.path.abspath(workdir), config, spec, model,
                  with_empty_arrays(params, model), step)


def _has_none(tree) -> bool:
  return any(x is None for x in jax.tree.leaves(tree, is_leaf=lambda x: x is None))


def with_empty_arrays(params: Any, model: TaskModel) -> Any:
  """Restored params with the zero-size arrays orbax cannot store (a layer pruned to
  no heads) put back from the model's own shapes."""
  if not _has_none(params):
    return params
  ids = np.zeros((1, 8), np.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, np.ones_like(ids)))
  return fill_empty(params, flax.linen.meta.unbox(shapes['params']))


def write_run(workdir: str, model: TaskModel, params: Any, *, config=None, tokenizer=None,
              step: int = 0, info: dict | None = None) -> str:
  """Writes a run folder from a model and its params (a transform's output).

  The params become both the best and the latest checkpoint, so
  `init_from=<workdir>:best` and `load_run` work as for a trained run. The folder is
  written whole beside its place ('<workdir>.partial') and then moved there, so a
  process killed while writing leaves no half run that a rerun would refuse or take
  for finished (a stage counts as done when its run has best/).
  """
  workdir = os.path.abspath(workdir)
  if os.path.exists(os.path.join(workdir, 'checkpoints')):
    raise FileExistsError(f'{workdir} already holds checkpoints; write to a new folder')
  staging = workdir + '.partial'
  shutil.rmtree(staging, ignore_errors=True)  # what a killed write left
  os.makedirs(staging)
  write_model(staging, model)
  if config is not None:
    with open(os.path.join(staging, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  if tokenizer is not None:
    save_tokenizer(staging, tokenizer)
  params = jax.tree.map(np.asarray, params)
  ckpt = Checkpoints(staging, keep=1, async_save=False, local=True)
  try:
    ckpt.save(step, {'step': np.asarray(step, np.int32), 'params': params},
              {'written_by': 'write_run', **(info or {})})
    ckpt.save_best(step, params, 0.0, {'step': step, **(info or {})})
  finally:
    ckpt.close()
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    if os.path.isdir(workdir):
      os.rmdir(workdir)
    os.replace(staging, workdir)
  else:  # a folder that already holds other files: move the run in, best/ last
    for name in sorted(os.listdir(staging), key=lambda n: n == 'best'):
      os.replace(os.path.join(staging, name), os.path.join(workdir, name))
    os.rmdir(staging)
  return workdir


def init_params(ref: str, model: TaskModel, fresh: Any, new: str | None = None
                ) -> tuple[Any, list[str]]:
  """Params for `model` taken from the saved run `ref`, the rest from `fresh`.

  The encoder must match the run's exactly (it is the run's own architecture), except
  for params matching `new` (a regex over 'encoder/...' paths: what a technique adds,
  e.g. LoRA factors), taken from `fresh` when the run lacks them; the layer mix and head
  are taken when their shapes match (same task and labels), else kept fresh. Returns
  (params, names of the top-level parts kept fresh).
  """
  folder, which = parse_ref(ref)
  saved, _ = restore_params(folder, which)
  saved = fill_empty(saved, fresh)  # zero-size arrays (no heads left) are not on disk
  expected = flax.traverse_util.flatten_dict(fresh['encoder'], sep='/')
  got = flax.traverse_util.flatten_dict(saved['encoder'], sep='/')
  if new:
    added = {k: v for k, v in expected.items()
             if k not in got and re.fullmatch(new, f'encoder/{k}')}
    got = {**got, **added}
    saved = {**saved, 'encoder': flax.traverse_util.unflatten_dict(got, sep='/')}
  # Name the commonest mismatch (an int8 run into a float model, or the reverse) plainly.
  run_only, model_only = (_quantized_sites(set(got) - set(expected)),
                          _quantized_sites(set(expected) - set(got)))
  if run_only:
    raise ValueError(_int8_as_float(f'{folder} ({which})', run_only))
  if model_only:
    raise ValueError(f'{folder} ({which}) holds float kernels where the model is int8/int4 '
                     f'({model_only[:3]}); quantize the run with experiments.transform '
                     '--transform ptq and start from that')
  problems = sorted(set(expected) ^ set(got)) or [
      f'{k}: run {np.shape(got[k])}, model {np.shape(v)}' for k, v in expected.items()
      if np.shape(got[k]) != np.shape(v)]
  if problems:
    raise ValueError(f'{folder} ({which}) does not match the encoder built from its '
                     f'{MODEL_FILE}: {problems[:10]}')
  params, fresh_parts = {'encoder': saved['encoder']}, []
  for part, value in fresh.items():
    if part == 'encoder':
      continue
    if part in saved and (jax.tree.structure(saved[part]) == jax.tree.structure(value)
                          and all(np.shape(a) == np.shape(b) for a, b in
                                  zip(jax.tree.leaves(saved[part]), jax.tree.leaves(value)))):
      params[part] = saved[part]
    else:
      params[part] = value
      fresh_parts.append(part)
  return params, fresh_parts


def run_outputs(run: SavedRun, features: list, batch_size: int | None = None,
                max_length: int | None = None, pad_multiple: int | None = None) -> Any:
  """The run's outputs on `features`, one per feature, in order.

  Batching defaults to the run's own config; pass the features' `max_length` and
  `pad_multiple` when they were encoded under another config (a student's).

  Returns, for objectives that support ensembles, their averageable outputs stacked
  (class probabilities [n, classes], scores [n]) so runs can be averaged; otherwise
  what the scorer takes (a list of per-feature tag ids or start/end logits).
  """
  objective = run.objective

  # The params are an argument, not constants of the trace: XLA would otherwise fold
  # what depends on them alone (a fake-quantized kernel's grid) at compile time, seconds
  # per layer, and with the host's arithmetic rather than the program's.
  @jax.jit
  def forward(params, batch):
    outputs = run.model.apply({'params': params}, batch['input_ids'],
                              batch['attention_mask'], batch.get('token_type_ids'),
                              deterministic=True)[0]
    if objective.supports_ensemble:
      return objective.averageable(outputs)
    return objective.predict(outputs)

  out = evaluation.gather_predictions(
      lambda batch: forward(run.params, batch), features,
      batch_size or run.config.eval_batch_size,
      max_length or run.config.max_length, pad_multiple or run.config.pad_multiple)
  return np.stack(out) if objective.supports_ensemble else out
