"""Orbax checkpoints for training: the latest k for resuming, the best one for use.

Layout under the workdir:
  checkpoints/<step>/{state, data}   train state pytree + the data iterator position
  best/<step>/{state, data}          params of the best evaluation so far

Orbax writes each step into a temporary folder and renames it when complete, so a
run killed mid-save leaves the previous checkpoints intact and the partial one is
ignored on restart.

Orbax refuses zero-size arrays, which a layer pruned to no heads has (its query, key,
value and out kernels have a 0 axis). They are written as None and put back as zeros:
from the abstract tree on a trainer restore, from the model's shapes when a run is
loaded (`fill_empty`).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _is_empty(x) -> bool:
  return hasattr(x, 'shape') and 0 in tuple(x.shape)


def drop_empty(tree: Any) -> Any:
  """`tree` with every zero-size array replaced by None (what orbax can write)."""
  return jax.tree.map(lambda x: None if _is_empty(x) else x, tree)


def fill_empty(tree: Any, like: Any) -> Any:
  """Nested dicts `tree` with each None where `like` holds a zero-size array made zeros.

  Only descends into dicts (params trees); anything else is returned unchanged.
  """
  if tree is None and _is_empty(like):
    return np.zeros(like.shape, like.dtype)
  if isinstance(tree, dict) and isinstance(like, dict):
    return {k: fill_empty(v, like[k]) if k in like else v for k, v in tree.items()}
  return tree


def _restore_empty(abstract: Any, restored: Any) -> Any:
  """`restored` (None where `abstract` has zero-size leaves) laid out like `abstract`."""
  return jax.tree.map(
      lambda a, r: (np.zeros(a.shape, a.dtype) if _is_empty(a) else r), abstract,
      restored, is_leaf=lambda x: x is None)


def this_process() -> ocp.options.MultiprocessingOptions:
  """Orbax options for a manager used by this process alone: reading a run folder, or
  writing one in a single-host stage. By default orbax expects every process of a job
  to open each manager together, and waits for the others."""
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                            barrier_sync_key_prefix=f'process{me}')


class Checkpoints:
  """Latest-k and best-by-metric checkpoint managers for one workdir.

  Args:
    workdir: run folder.
    keep: number of latest checkpoints kept for resuming.
    best_mode: 'max' or 'min' for the metric that selects the best checkpoint.
    async_save: write in a background thread (the loop waits before the next save).
    local: used by this process alone (`this_process`), not by every process of a job.
  """

  def __init__(self, workdir: str | os.PathLike, keep: int = 2, best_mode: str = 'max',
               async_save: bool = True, local: bool = False):
    if keep < 1:
      raise ValueError(f'keep must be >= 1, got {keep}')
    workdir = os.path.abspath(os.fspath(workdir))
    processes = this_process() if local else ocp.options.MultiprocessingOptions()
    if local:  # orbax creates folders only for managers of every process
      for name in ('checkpoints', 'best'):
        os.makedirs(os.path.join(workdir, name), exist_ok=True)
    self.latest = ocp.CheckpointManager(
        os.path.join(workdir, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not local,
                                             enable_async_checkpointing=async_save,
                                             multiprocessing_options=processes))
    self.best = ocp.CheckpointManager(
        os.path.join(workdir, 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=not local, best_fn=lambda m: m['score'], best_mode=best_mode,
            keep_checkpoints_without_metrics=False, enable_async_checkpointing=False,
            multiprocessing_options=processes))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Saves the train state and the data position (waits for the previous save)."""
    self.latest.wait_until_finished()
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(drop_empty(state)), data=ocp.args.JsonSave(data_state)))

  def save_best(self, step: int, params: Any, score: float, info: dict) -> None:
    """Offers `params` as the best so far; orbax keeps it only if `score` is better."""
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(drop_empty(params)), data=ocp.args.JsonSave(info)),
                   metrics={'score': float(score)})

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores the state (shaped and sharded like `abstract_state`) and data position."""
    step = self.latest.latest_step() if step is None else step
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(drop_empty(abstract_state)),
        data=ocp.args.JsonRestore()))
    return _restore_empty(abstract_state, restored['state']), restored['data']

  def restore_best(self, abstract_params: Any) -> tuple[Any, dict]:
    step = self.best.best_step()
    if step is None:
      raise FileNotFoundError('No best checkpoint has been saved in this workdir')
    restored = self.best.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(drop_empty(abstract_params)),
        data=ocp.args.JsonRestore()))
    return _restore_empty(abstract_params, restored['state']), restored['data']

  def close(self) -> None:
    self.latest.wait_until_finished()
    self.latest.close()
    self.best.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) for restoring into the layout of `tree`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      tree)


def abstract_on_this_process(directory: str) -> Any:
  """Abstract arrays on this process's first device, shaped as saved in `directory`
  (an item folder): a run trained on N devices is read whole by a process with other
  devices (a laptop, one process of a job), where orbax would otherwise want the saving
  job's device layout."""
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process())
  tree = checkpointer.metadata(directory).item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
                      if hasattr(m, 'shape') else m, tree)
