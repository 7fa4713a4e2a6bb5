"""Studies made of many trainer runs: each run's row is kept beside it and reused.

A study (`lamb_batch`, `pretrain_ablation`, `encoder_vs_decoder`, ...) trains one run
per setting. `run_or_reuse` trains a run unless its folder already holds the row of a
finished run with exactly the same trainer config, so a study that was stopped, or
extended with new settings, trains only what is missing. A diverged run (NaN loss) is a
result, not a crash. `write_results` writes results.md and results.json; the caller
prints `report_text(result)` (the table, then the one JSON line a benchmark ends with).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from typing import Any, Callable

from research import distributed, logs
from research.evaluate import speed
from research.train import trainer

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
  clear(workdir)  # a half-finished run would be resumed

  def train():
    try:
      return make_row(trainer.train_and_evaluate(config, workdir))
    except FloatingPointError as e:
      return make_row({'diverged': str(e)})
  row, seconds = speed.timed_call(train)
  row['wall_seconds'] = seconds
  if keep:
    distributed.on_primary('study/row', _write_json, row_file, {'row': row, 'settings': settings})
  else:
    distributed.on_primary('study/drop', shutil.rmtree, workdir, ignore_errors=True)
  return row


def clear(workdir: str) -> None:
  """Deletes a run folder (a leftover would be resumed); in a job of several processes
  process 0 deletes it while the others wait."""
  distributed.on_primary('study/clear', shutil.rmtree, workdir, ignore_errors=True)


def drop(workdir: str) -> None:
  """Deletes a finished run folder, and its parent folder when that is left empty."""
  def remove():
    shutil.rmtree(workdir, ignore_errors=True)
    parent = os.path.dirname(workdir)
    if os.path.isdir(parent) and not os.listdir(parent):
      os.rmdir(parent)
  distributed.on_primary('study/drop', remove)


def _write_json(path: str, value: Any) -> None:
  with open(path, 'w') as f:
    json.dump(value, f)


def write_results(out: str, title: str, table: str, result: dict,
                  summary: dict[str, Any]) -> dict[str, Any]:
  """results.md (title + table) and results.json (`result`) in `out`; returns `result`
  with 'title', 'table' and 'summary' (the JSON line a benchmark ends with) added."""
  if distributed.is_primary():  # one job, one report
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'results.md'), 'w') as f:
      f.write(f'# {title}\n\n{table}')
    with open(os.path.join(out, 'results.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return {**result, 'title': title, 'table': table, 'summary': summary}


def report_text(result: dict[str, Any]) -> str:
  """What a study's script prints: the title, the table, then one JSON line."""
  return f'# {result["title"]}\n\n{result["table"]}\n{json.dumps(result["summary"])}'


def command_line(run: Callable[..., dict[str, Any]], name: str) -> None:
  """A study's command line, the same for every study (`experiments/<name>.py`):

      python -m experiments.<name> --config experiments/configs/<name>.py[:args] \\
          [--config.field=value ...] [--out FOLDER]

  runs `run(config, out, command=...)` and prints `report_text` (with the samples first
  when the result has them)."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file('config', None,
                                           f'experiments/configs/{name}.py[:args]')
  out = flags.DEFINE_string('out', f'runs/{name}', 'Folder for results and run folders.')
  flags.mark_flags_as_required(['config'])

  def main(argv):
    del argv
    logs.setup()
    distributed.initialize()  # several processes when the environment says so
    result = run(config.value, out.value,
                 command=f'python -m experiments.{name} ' + ' '.join(sys.argv[1:]))
    if not distributed.is_primary():
      return
    if 'samples_text' in result:
      print(result['samples_text'])
    print(report_text(result))
  app.run(main)
