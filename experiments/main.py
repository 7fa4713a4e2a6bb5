"""Runs one experiment config: python -m experiments.main --config FILE[:ARGS] --workdir DIR.

    python -m experiments.main --config experiments/configs/glue.py:task=sst2,runlocal \
        --workdir /tmp/sst2 --config.optimizer.learning_rate=5e-5

Config fields can be overridden with --config.<field>=<value>. A rerun with the same
workdir resumes from its latest checkpoint.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from research import distributed, logs
from research.evaluate.plots import training_curves
from research.train.metric_writer import read_metrics
from research.train.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and plots.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logs.setup()
  distributed.initialize()  # a no-op unless the environment describes several processes
  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  result = train_and_evaluate(config, workdir)
  if not distributed.is_primary():  # process 0 draws and reports for the job
    return
  summary = {k: result[k] for k in ('final', 'best', 'steps', 'trainable_params',
                                    'total_params')}
  summary['outputs'] = {
      'config': os.path.join(workdir, 'config.json'),
      'metrics (JSONL)': os.path.join(workdir, 'metrics.jsonl'),
      'tensorboard': os.path.join(workdir, 'tensorboard'),
      'checkpoints (latest, for resuming)': os.path.join(workdir, 'checkpoints'),
      'checkpoint (best dev score)': os.path.join(workdir, 'best'),
      'architecture': os.path.join(workdir, 'model.json'),
      'plot': training_curves(read_metrics(workdir, 'train'), read_metrics(workdir, 'eval'),
                              os.path.join(workdir, 'plots', 'training_curves.png')),
  }
  print(json.dumps(summary, indent=2))
  main_metric = result['main_metric']  # a corpus run's own, not config.task's
  print(f'\n{result["task"]} dev {main_metric}: {result["final"].get(main_metric, float("nan")):.2f} '
        f'(best {result["best"]["score"]:.2f} at step {result["best"]["step"]})')


if __name__ == '__main__':
  app.run(main)
