"""Device mesh and logical-axis sharding rules: one code path for 1 CPU or a pod.

The mesh has two axes: 'data' (pure data parallelism: params replicated) and 'fsdp'
(data parallel too, but params and optimizer state are split along their 'embed'
axis). Batches are split over both. Parameters carry logical axis names (see
models/encoder.py); `LOGICAL_RULES` maps them to mesh axes.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')


def logical_rules(fsdp: bool) -> tuple[tuple[str, Any], ...]:
  """Logical axis -> mesh axis rules; with fsdp, 'embed' dims are split over 'fsdp'."""
  return (('batch', BATCH_AXES), ('embed', 'fsdp' if fsdp else None), ('vocab', None),
          ('heads', None), ('kv', None), ('mlp', None), ('length', None),
          ('embed_in', None), ('embed_out', None))


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh; -1 for `data` means all remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices')
  if data == -1:
    data = len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(f'mesh data={data} x fsdp={fsdp} != {len(devices)} devices')
  return Mesh(np.asarray(devices).reshape(data, fsdp), ('data', 'fsdp'))


def param_shardings(boxed_params: Any, mesh: Mesh) -> Any:
  """NamedShardings for params whose init carried logical partitioning boxes."""
  specs = nn.get_partition_spec(boxed_params)
  fsdp = mesh.shape['fsdp'] > 1
  return nn.logical_to_mesh_sharding(specs, mesh, logical_rules(fsdp))


def _names(path) -> tuple:
  """A key path as plain names: dict keys, attribute names and sequence indices."""
  out = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        out.append(getattr(key, attr))
        break
  return tuple(out)


def mirrored_shardings(tree: Any, params: Any, mesh: Mesh | None = None) -> Any:
  """Shardings for `tree` (an optimizer state, EMA, pruning masks...) that follow `params`.

  A leaf whose key path ends with a parameter's full path and whose shape is that
  parameter's (Adam's moments, an EMA copy, a pruning mask or score) gets the
  parameter's sharding; every other leaf (step counts, factored or scalar statistics)
  is replicated. Without this, state built by `jax.jit(tx.init)` from sharded params
  lands whole on one device (its values do not depend on the params), and FSDP would
  split the params but not the optimizer state beside them.

  Args:
    tree: arrays or ShapeDtypeStructs (e.g. `jax.eval_shape(tx.init, params)`).
    params: the parameters, placed with NamedShardings.
    mesh: the mesh; None = that of the params' shardings.

  Returns:
    A tree of NamedShardings shaped as `tree`, or None when `params` are not placed
    with NamedShardings (a single device: nothing to follow).
  """
  by_path, lengths = {}, set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    current = getattr(leaf, 'sharding', None)
    if isinstance(current, NamedSharding):
      mesh = mesh if mesh is not None else current.mesh
      names = _names(path)
      by_path[names] = (tuple(leaf.shape), current)
      lengths.add(len(names))
  if mesh is None:
    return None
  rest = replicated(mesh)

  def follow(path, leaf):
    names = _names(path)
    for n in sorted(lengths, reverse=True):
      match = by_path.get(names[-n:]) if len(names) >= n else None
      if match is not None and match[0] == tuple(leaf.shape):
        return match[1]
    return rest

  return jax.tree_util.tree_map_with_path(follow, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def on_mesh(x: Any, mesh: Mesh) -> NamedSharding:
  """`x`'s sharding if it is already a NamedSharding on `mesh`, else replicated."""
  current = getattr(x, 'sharding', None)
  if isinstance(current, NamedSharding) and current.mesh == mesh:
    return current
  return replicated(mesh)


def _check_rows(batch: dict, devices: int, whose: str = '') -> None:
  for key, value in batch.items():
    if value.shape[0] % devices:
      raise ValueError(f'batch field {key!r} has {value.shape[0]} rows, not a multiple '
                       f'of the {devices} devices{whose}')


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a host-local numpy batch onto the mesh, split along the batch axis.

  On several hosts each passes its own slice and the global array is assembled
  with `jax.make_array_from_process_local_data`.
  """
  sharding = batch_sharding(mesh)
  # This process's slice goes to its own devices.
  _check_rows(batch, len(mesh.local_devices),
              ' of this process' if jax.process_count() > 1 else '')
  if jax.process_count() > 1:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
  return {k: jax.device_put(v, sharding) for k, v in batch.items()}


def put_global_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a batch that every process holds whole (evaluation's) onto the mesh.

  One process: as `put_batch`. Several: each process hands over only the rows its own
  devices hold, picked by index, so no row is doubled or dropped.
  """
  if jax.process_count() == 1:
    return put_batch(batch, mesh)
  sharding = batch_sharding(mesh)
  _check_rows(batch, mesh.devices.size)
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
          for k, v in batch.items()}


def put(tree: Any, shardings: Any) -> Any:
  """`jax.device_put(tree, shardings)` that also works in a job of several processes.

  There, a sharding spans devices of other processes, which `device_put` refuses for
  a value held on one device; every process holds the same whole value (read from the
  same checkpoint, or computed alike), so each builds its own shards from it.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def one(x, target):
    if isinstance(x, jax.Array) and x.sharding == target:
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, target)  # already global: a resharding
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])

  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, shardings), tree)
  return jax.tree.map(one, tree, shardings)
