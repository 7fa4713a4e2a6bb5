"""Runs one experiment config: python -m experiments.main --config FILE[:ARGS] --workdir DIR.

    python -m experiments.main --config experiments/configs/glue.py:task=sst2,runlocal \
        --workdir /tmp/sst2 --config.optimizer.learning_rate=5e-5

Config fields can be overridden with --config.<field>=<value>. A rerun with the same
workdir resumes from its latest checkpoint.
"""
from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

from research.train.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and plots.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # orbax logs every file it writes
  result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  summary = {k: result[k] for k in ('final', 'best', 'steps', 'trainable_params',
                                    'total_params', 'workdir')}
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  app.run(main)
