r"""Accuracy, size and CPU speed of several saved runs against their teacher, side by side.

    python -m experiments.compare_runs --teacher runs/sst2_main:best --out runs/compare \
        --runs int8=runs/sst2_int8_max,qat_w8a8=runs/sst2_qat_w8a8,r128=runs/sst2_r128_ft

Every run is scored on the teacher's dev split with the teacher's tokenizer, timed on the
same dev sentences (each batch padded to its longest; the teacher also at static
length), rounds alternated (`research/runs/measure.py`). Writes `<out>/compare.json`
and `<out>/compare.png` (dev metric against sequences/s and against MB on disk), prints
a table and ends with one JSON line.
"""
from __future__ import annotations

import json

from absl import app, flags

from research import logs, specs
from research.runs import measure

_TEACHER = flags.DEFINE_string('teacher', None, "The reference run, 'folder[:best]'.")
_RUNS = flags.DEFINE_string('runs', None, "name=folder[:best|:latest],... to compare.")
_OUT = flags.DEFINE_string('out', None, 'Folder for compare.json and compare.png.')
_SENTENCES = flags.DEFINE_integer('sentences', 256, 'Dev sentences timed (0 = all).')
_BATCH_SIZES = flags.DEFINE_string('batch_sizes', '1,32', 'Batch sizes timed.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternated timing rounds.')
_TORCH = flags.DEFINE_bool('torch', True, 'Also time transformers + PyTorch on the teacher.')
_EVAL_EXAMPLES = flags.DEFINE_integer('eval_examples', 0, 'Dev examples scored (0 = all).')
flags.mark_flags_as_required(['teacher', 'runs', 'out'])


def main(argv):
  del argv
  logs.setup()
  report = measure.compare(
      _TEACHER.value, measure.parse_runs(_RUNS.value), _OUT.value,
      eval_examples=_EVAL_EXAMPLES.value, sentences=_SENTENCES.value,
      batch_sizes=specs.items(_BATCH_SIZES.value, int, what='--batch_sizes'),
      rounds=_ROUNDS.value, torch=_TORCH.value)
  print(report['table'])
  print(json.dumps({'benchmark': 'compare_runs', 'teacher': report['teacher'],
                    'metric': report['metric'], 'rows': report['rows']}))


if __name__ == '__main__':
  app.run(main)
