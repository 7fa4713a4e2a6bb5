r"""Compresses a fine-tuned run FastFormers-style and reports accuracy, size and speed.

    python -m experiments.compress --config experiments/configs/fastformers.py:cpu_budget \
        --teacher runs/sst2_main:best --workdir runs/sst2_main/compressed

See experiments/configs/fastformers.py for the stages and `research/runs/fastformers.py`
for the chain. Every stage writes a run folder
(`<workdir>/<student>/{init,distilled,pruned,recovered,int8}`) that the next starts
from (`init_from`), so any of them can be evaluated, exported or fine-tuned further; a
rerun skips finished stages and resumes a killed training stage from its checkpoint.
Prints a table, writes `<workdir>/pipeline.json` and `<workdir>/pareto.png`, and ends
with one JSON line of the figures.
"""
from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from research import distributed, logs
from research.runs import fastformers

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Pipeline config file.')
_TEACHER = flags.DEFINE_string('teacher', None, "The fine-tuned run, 'folder[:best]'.")
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for the stages and the report.')
flags.mark_flags_as_required(['config', 'teacher', 'workdir'])


def main(argv):
  del argv
  logs.setup()
  distributed.initialize()  # several processes when the environment says so
  report = fastformers.compress(_CONFIG.value, _TEACHER.value, _WORKDIR.value)
  if report is None:  # not process 0: it reports for the job
    return
  print(report['table'])
  for name, steps in report['stages'].items():
    print(f'{name} per-stage speed-ups: ' + '; '.join(
        f'{step} ' + ', '.join(f'{v:.2f}x at {b}' for b, v in by.items())
        for step, by in steps.items()))
  print(json.dumps({'benchmark': 'fastformers_pipeline', 'teacher': report['teacher'],
                    'metric': report['metric'], 'stages': report['stages'],
                    'rows': report['rows']}))


if __name__ == '__main__':
  app.run(main)
