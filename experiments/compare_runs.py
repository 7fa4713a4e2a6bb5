r"""Accuracy, size and CPU speed of several saved runs against their teacher, side by side.

    python -m experiments.compare_runs --teacher runs/sst2_main:best --out runs/compare \
        --runs int8=runs/sst2_int8_max,qat_w8a8=runs/sst2_qat_w8a8,r128=runs/sst2_r128_ft

Every run is scored on the teacher's dev split with the teacher's tokenizer, timed on the
same dev sentences (each batch padded to its longest; the teacher also at static
length), rounds alternated (`research/evaluate/speed.py`). Writes `<out>/compare.json`
and `<out>/compare.png` (dev metric against sequences/s and against MB on disk), prints
a table and ends with one JSON line.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
import ml_collections

from experiments import compress
from research.train import saved_runs

def parse_runs(text: str) -> dict[str, str]:
  """'a=runs/x,b=runs/y:latest' -> {'a': 'runs/x', ...}; names must be unique."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(','))):
    name, sep, folder = part.partition('=')
    if not sep or not name or not folder:
      raise ValueError(f'--runs entries are name=folder, got {part!r}')
    if name in out or name == 'teacher':
      raise ValueError(f'run name {name!r} is used twice (or is "teacher")')
    out[name] = folder
  if not out:
    raise ValueError('--runs names no run')
  return out


def compare(teacher: str, runs: dict[str, str], out: str, speed: dict,
            eval_examples: int = 0) -> dict:
  pipeline = ml_collections.ConfigDict({'eval_examples': eval_examples, 'speed': speed})
  rows = compress.measure(pipeline, teacher, runs)
  metric = saved_runs.load_run(*saved_runs.parse_ref(teacher)).spec.main_metric
  batches = [int(b) for b in speed['batch_sizes'].split(',')]
  os.makedirs(out, exist_ok=True)
  plot = compress.pareto_plot(rows, metric, batches[-1], os.path.join(out, 'compare.png'),
                              title='saved runs')
  report = {'teacher': teacher, 'metric': metric, 'rows': rows, 'plot': plot}
  with open(os.path.join(out, 'compare.json'), 'w') as f:
    json.dump(report, f, indent=2)
  print(compress.table(rows, metric, batches))
  return report


def main(argv):
  del argv
  f = flags.FLAGS
  report = compare(f.teacher, parse_runs(f.runs), f.out,
                   {'sentences': f.sentences, 'batch_sizes': f.batch_sizes,
                    'rounds': f.rounds, 'torch': f.torch}, f.eval_examples)
  print(json.dumps({'benchmark': 'compare_runs', 'teacher': report['teacher'],
                    'metric': report['metric'], 'rows': report['rows']}))


if __name__ == '__main__':
  flags.DEFINE_string('teacher', None, "The reference run, 'folder[:best]'.")
  flags.DEFINE_string('runs', None, "name=folder[:best|:latest],... to compare.")
  flags.DEFINE_string('out', None, 'Folder for compare.json and compare.png.')
  flags.DEFINE_integer('sentences', 256, 'Dev sentences timed (0 = all).')
  flags.DEFINE_string('batch_sizes', '1,32', 'Batch sizes timed.')
  flags.DEFINE_integer('rounds', 3, 'Alternated timing rounds.')
  flags.DEFINE_bool('torch', True, 'Also time transformers + PyTorch on the teacher.')
  flags.DEFINE_integer('eval_examples', 0, 'Dev examples scored (0 = all).')
  flags.mark_flags_as_required(['teacher', 'runs', 'out'])
  app.run(main)
