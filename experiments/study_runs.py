"""Studies made of many trainer runs: each run's row is kept beside it and reused.

A study (experiments/lamb_batch.py, pretrain_ablation.py) trains one run per setting.
`run_or_reuse` trains a run unless its folder already holds the row of a finished run
with exactly the same trainer config, so a study that was stopped, or extended with new
settings, trains only what is missing. A diverged run (NaN loss) is a result, not a crash.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Callable

from research.train.trainer import train_and_evaluate

ROW_FILE = 'row.json'


def run_or_reuse(config, workdir: str, make_row: Callable[[dict], dict[str, Any]], *,
                 keep: bool = True) -> dict[str, Any]:
  """The row of the run of trainer `config` in `workdir`, training it if needed.

  Args:
    config: a trainer config.
    workdir: the run's folder.
    make_row: the train_and_evaluate result -> the row (JSON-able); called with
      {'diverged': message} when the loss became NaN.
    keep: keep the run folder (and its row, for reuse); False deletes it afterwards.

  Returns:
    The row, with 'wall_seconds' (of the training, when it was trained now).
  """
  row_file = os.path.join(workdir, ROW_FILE)
  settings = json.loads(config.to_json())
  if os.path.isfile(row_file):
    with open(row_file) as f:
      saved = json.load(f)
    if saved.get('settings') == settings:
      return saved['row']
    logging.info('%s holds a run with other settings: training again', workdir)
  shutil.rmtree(workdir, ignore_errors=True)  # a half-finished run would be resumed
  start = time.perf_counter()
  try:
    row = make_row(train_and_evaluate(config, workdir))
  except FloatingPointError as e:
    row = make_row({'diverged': str(e)})
  row['wall_seconds'] = time.perf_counter() - start
  if keep:
    with open(row_file, 'w') as f:
      json.dump({'row': row, 'settings': settings}, f)
  else:
    shutil.rmtree(workdir, ignore_errors=True)
  return row


def write_results(out: str, title: str, table: str, result: dict,
                  summary: dict[str, Any]) -> None:
  """results.md (title + table) and results.json in `out`; prints the table and then
  `summary` as the one JSON line a benchmark ends with."""
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(f'# {title}\n\n{table}')
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print(f'# {title}\n\n{table}')
  print(json.dumps(summary))


def main_from_flags(run: Callable[..., Any], module: str) -> None:
  """A study script's `main`: INFO logging (absl's own quieter), then
  `run(FLAGS.config, FLAGS.out, command=<the command line>)`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)
  run(flags.FLAGS.config, flags.FLAGS.out,
      command=f'python -m {module} ' + ' '.join(sys.argv[1:]))
