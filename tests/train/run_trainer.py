"""Subprocess entry for trainer tests: python run_trainer.py CONFIG_JSON WORKDIR OUT_NPZ.

With KILL_WHILE_WRITING=N in the environment the process SIGKILLs itself while the
checkpoint of step N is being written: after orbax has started the step's temporary
folder and before it is complete and renamed.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import traverse_util  # pylint: disable=wrong-import-position

from research.train.trainer import train_and_evaluate  # pylint: disable=wrong-import-position


def kill_while_writing(step: int) -> None:
  import signal  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from research.train import checkpointing  # pylint: disable=g-import-not-at-top
  armed = []
  save, write_json = checkpointing.Checkpoints.save, ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  def save_and_arm(self, at_step, state, data_state):
    if at_step == step:
      armed.append(at_step)
    return save(self, at_step, state, data_state)

  async def write_or_die(self, item, directory):
    if armed:  # writing the data item of step N, inside the checkpoint's temporary folder
      os.kill(os.getpid(), signal.SIGKILL)
    return await write_json(self, item, directory)

  checkpointing.Checkpoints.save = save_and_arm
  ocp.JsonCheckpointHandler._save_fn = write_or_die  # pylint: disable=protected-access


def main():
  if os.environ.get('KILL_WHILE_WRITING'):
    kill_while_writing(int(os.environ['KILL_WHILE_WRITING']))
  config = ml_collections.ConfigDict(json.loads(open(sys.argv[1]).read()))
  result = train_and_evaluate(config, sys.argv[2])
  flat = traverse_util.flatten_dict(result['params'], sep='/')
  np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in flat.items()})
  with open(sys.argv[3] + '.json', 'w') as f:
    json.dump({'final': result['final'], 'best': result['best']}, f)


if __name__ == '__main__':
  main()
