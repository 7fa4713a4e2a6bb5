"""Subprocess entry of the multi-process tests: one process of a training job.

    python run_multihost.py CONFIG_JSON WORKDIR OUT_PREFIX

Joins the job its environment describes (`research.distributed`), trains, and writes
OUT_PREFIX.p<process>.json: the feature indices of every train batch this process read
(its slice of the global batch). Process 0 also writes OUT_PREFIX.npz: the final params,
gathered from every process.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from research import distributed  # pylint: disable=wrong-import-position


def main():
  source, workdir, out = sys.argv[1:4]
  distributed.initialize()
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from research.data import batching  # pylint: disable=g-import-not-at-top
  from research.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top

  read = []
  next_batch = batching.BatchIterator.__next__

  def recording(self):
    batch = next_batch(self)
    if self._shuffle:  # pylint: disable=protected-access  (the train iterator)
      read.append(batch['index'].tolist())
    return batch

  batching.BatchIterator.__next__ = recording
  config = ml_collections.ConfigDict(json.loads(open(source).read()))
  params = train_and_evaluate(config, workdir)['params']
  arrays = {k: distributed.to_host(v) for k, v in
            traverse_util.flatten_dict(params, sep='/').items()}
  with open(f'{out}.p{jax.process_index()}.json', 'w') as f:
    json.dump({'process_count': jax.process_count(), 'devices': jax.device_count(),
               'batches': read}, f)
  if distributed.is_primary():
    np.savez(out + '.npz', **arrays)


if __name__ == '__main__':
  main()
