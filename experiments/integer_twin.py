r"""The integer-only (I-BERT) model of a fully quantized run beside its fake-quant twin.

    python -m experiments.integer_twin --run runs/fq:best

Scores the twin, the twin with every non-linearity's output scaled by 1 + eps (the
band a model with dynamic per-tensor grids moves in under perturbations far below one
grid step) and the integer-only model; prints one JSON line (scores, gap, band,
per-example agreement with the twin). `research/runs/integer_twin.py`.
"""
from __future__ import annotations

import json

from absl import app, flags

from research import logs
from research.runs import integer_twin

flags.DEFINE_string('run', None, "A fully quantized run, 'folder[:best|:latest]'.")
flags.DEFINE_list('perturbations', [repr(e) for e in integer_twin.PERTURBATIONS],
                  'eps values: the twin with non-linearity outputs scaled by 1 + eps.')
flags.DEFINE_integer('eval_examples', 0, 'Dev examples scored (0 = all).')
flags.DEFINE_string('data_dir', None, "The task's data folder (default: the run's).")
flags.mark_flags_as_required(['run'])


def main(argv):
  del argv
  logs.setup()
  f = flags.FLAGS
  report = integer_twin.compare(f.run, [float(e) for e in f.perturbations],
                                f.eval_examples, f.data_dir)
  print(json.dumps(report))


if __name__ == '__main__':
  app.run(main)
