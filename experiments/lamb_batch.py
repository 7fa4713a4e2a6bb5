r"""LAMB against AdamW as the batch grows (You et al. 2020): final MLM loss per batch size.

    python -m experiments.lamb_batch --config experiments/configs/lamb_batch.py \
        --out runs/lamb_batch

See experiments/configs/lamb_batch.py for the settings. Each (optimizer, batch size) is
one `train_and_evaluate` run of a model pre-trained from scratch (`config.scratch`) on
the same corpus, seeing the same number of sequences; only the batch size, the number
of updates and the (square-root scaled) learning rate change. The final dev MLM loss on
held-out sequences with fixed masks is what is compared. Writes results.md,
results.json and loss_vs_batch.png to --out and ends by printing one JSON line. A run
whose folder holds its row (row.json) from the same trainer settings is not run again.
The study is `research/runs/lamb_batch.py`.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from research.runs import lamb_batch, study

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiments/configs/lamb_batch.py[:args]')
_OUT = flags.DEFINE_string('out', 'runs/lamb_batch', 'Folder for results and run folders.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)
  result = lamb_batch.run(_CONFIG.value, _OUT.value,
                     command='python -m experiments.lamb_batch ' + ' '.join(sys.argv[1:]))
  print(study.report_text(result))


if __name__ == '__main__':
  app.run(main)
