r"""NSP / SOP / MLM-only ablation: pre-train with each objective, fine-tune on pair tasks.

    python -m experiments.pretrain_ablation --out runs/pretrain_ablation \
        --config experiments/configs/pretrain_ablation.py

See experiments/configs/pretrain_ablation.py. Runs go to out/pretrain_<objective> and
out/<objective>/<task>_s<seed>; each keeps its row and is reused when the study is
rerun with the same settings (research/runs/study.py); the study is
`research/runs/pretrain_ablation.py`. Writes results.md and
results.json to --out and ends by printing one JSON line.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from research.runs import pretrain_ablation, study

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiments/configs/pretrain_ablation.py[:args]')
_OUT = flags.DEFINE_string('out', 'runs/pretrain_ablation', 'Folder for results and run folders.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)
  result = pretrain_ablation.run(_CONFIG.value, _OUT.value,
                     command='python -m experiments.pretrain_ablation ' + ' '.join(sys.argv[1:]))
  print(study.report_text(result))


if __name__ == '__main__':
  app.run(main)
