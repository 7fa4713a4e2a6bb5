"""Subprocess entry of the kill-anywhere tests: a trainer run or the FastFormers chain
that can SIGKILL itself in the middle of writing a checkpoint.

    python run_killable.py train CONFIG_JSON WORKDIR OUT_NPZ
    python run_killable.py compress TEACHER WORKDIR OUT_NPZ

With KILL_IN=<text> (and optionally KILL_AT_STEP=<n>) in the environment, the process
kills itself while writing the first checkpoint whose folder path contains <text> (of
step n): after orbax has started the step's temporary folder, before it is complete.
OUT_NPZ receives the final params (train: the returned params; compress: every stage's
best params, keyed '<stage>/<path>').
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import orbax.checkpoint as ocp  # pylint: disable=wrong-import-position
from flax import traverse_util  # pylint: disable=wrong-import-position

from research.train import checkpointing  # pylint: disable=wrong-import-position


def arm_kill(text: str, step: int | None) -> None:
  """SIGKILL while the JSON item of a matching checkpoint is being written."""
  armed = []
  save, save_best = checkpointing.Checkpoints.save, checkpointing.Checkpoints.save_best
  write_json = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  def matches(manager, at_step):
    return text in str(manager.directory) and (step is None or at_step == step)

  def save_and_arm(self, at_step, *args, **kwargs):
    if matches(self.latest, at_step):
      armed.append(at_step)
    return save(self, at_step, *args, **kwargs)

  def save_best_and_arm(self, at_step, *args, **kwargs):
    if matches(self.best, at_step):
      armed.append(at_step)
    return save_best(self, at_step, *args, **kwargs)

  async def write_or_die(self, item, directory):
    if armed:
      os.kill(os.getpid(), signal.SIGKILL)
    return await write_json(self, item, directory)

  checkpointing.Checkpoints.save = save_and_arm
  checkpointing.Checkpoints.save_best = save_best_and_arm
  ocp.JsonCheckpointHandler._save_fn = write_or_die  # pylint: disable=protected-access


def flat(tree, prefix=''):
  return {prefix + k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(tree, sep='/').items()}


def main():
  mode, source, workdir, out = sys.argv[1:5]
  if os.environ.get('KILL_IN'):
    step = os.environ.get('KILL_AT_STEP')
    arm_kill(os.environ['KILL_IN'], int(step) if step else None)
  if mode == 'train':
    from research.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(json.loads(open(source).read()))
    arrays = flat(train_and_evaluate(config, workdir)['params'])
  else:
    from research.runs import fastformers  # pylint: disable=g-import-not-at-top
    from research.train import saved_runs  # pylint: disable=g-import-not-at-top
    pipeline = fastformers.defaults()
    pipeline.students, pipeline.distill.steps, pipeline.prune.recovery_steps = 'layers=1', 4, 2
    pipeline.prune.importance_examples, pipeline.quantize.examples = 16, 16
    pipeline.eval_examples = 16
    chains = fastformers.run_stages(pipeline, source, workdir)
    arrays = {}
    for stage, folder in chains['L1'].items():
      arrays.update(flat(saved_runs.restore_params(folder, 'best')[0], f'{stage}/'))
  np.savez(out, **arrays)


if __name__ == '__main__':
  main()
