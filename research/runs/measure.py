"""Accuracy, size and CPU speed of saved runs against their teacher, side by side.

    rows = measure('runs/sst2:best', {'int8': 'runs/sst2_int8'}, eval_examples=0,
                   sentences=256, batch_sizes=(1, 32), rounds=3, torch=True)
    print(markdown_table(rows, 'accuracy', [1, 32]))
    report = compare('runs/sst2:best', {'int8': 'runs/sst2_int8'}, 'runs/compare')

Every run is scored on the teacher's dev split with the teacher's tokenizer and timed
on the same dev sentences: each batch padded to its longest (dynamic length), the
teacher also at static length (`max_length`), rounds alternated
(`research/evaluate/speed.py`). With `torch`, transformers + PyTorch runs the teacher's
encoder (exported) too, as a reference. Speed is one host's: a multi-process job
measures on process 0 only (the caller decides).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from research import specs
from research.checkpoints import hf_export
from research.evaluate import plots, speed
from research.models.sizes import count_params
from research.runs import run_data


def torch_runner(encoder_config, encoder_params, threads: int | None = None,
                 dtype: str = 'float32') -> Callable[[dict], Any]:
  """transformers + PyTorch running the same encoder (exported), for reference speeds.

  Only the encoder: a task head is one small matmul. `dtype='bfloat16'` runs under CPU
  autocast, as a PyTorch user would. Needs torch and transformers (test extras).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  with tempfile.TemporaryDirectory() as folder:
    config, params = hf_export.pad_pruned(encoder_config, encoder_params)
    hf_export.export_pretrained(config, params, folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()

  def run(batch):
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16,
                                                enabled=dtype == 'bfloat16'):
      ids = torch.from_numpy(batch['input_ids'].astype(np.int64))
      mask = torch.from_numpy(batch['attention_mask'].astype(np.int64))
      return model(input_ids=ids, attention_mask=mask).last_hidden_state
  return run


def measure(teacher_ref: str, named: Mapping[str, str], *, eval_examples: int = 0,
            sentences: int = 0, batch_sizes: Sequence[int] = (1, 32), rounds: int = 3,
            torch: bool = True) -> list[dict[str, Any]]:
  """One row per model (the teacher and `named`: name -> run, best checkpoint by
  default): dev metric, parameters, bytes on disk, sequences/s per batch size and the
  speed-ups against the teacher (static length) and transformers (with `torch`)."""
  teacher = run_data.load(teacher_ref, eval_examples=eval_examples)
  runs = {'teacher': teacher.run}
  for name, ref in named.items():
    runs[name] = run_data.load(ref).run
  examples, features = teacher.dev
  metric = teacher.metric
  rows = []
  for name, run in runs.items():
    scores = teacher.evaluate(run.model, run.params, examples, features)
    rows.append({'model': name, 'workdir': run.workdir, metric: scores[metric],
                 'params': count_params(run.params),
                 'bytes_on_disk': speed.folder_bytes(os.path.join(run.workdir, 'best')),
                 'layers': run.model.encoder.num_layers,
                 'heads': sum(run.model.encoder.heads(i)
                              for i in range(run.model.encoder.num_layers))})
  timed = examples[:sentences] if sentences else examples
  # Built once for every batch size: each puts its params on the device, and the
  # PyTorch one exports and reloads the teacher.
  runners = {name: speed.runner(run.model, run.params) for name, run in runs.items()}
  runners['teacher, static length'] = runners['teacher']
  if torch:
    runners['transformers teacher, static length'] = torch_runner(
        teacher.run.model.encoder, teacher.run.params['encoder'])
    runners['transformers teacher'] = runners['transformers teacher, static length']
  by_name = {row['model']: row for row in rows}
  max_length = teacher.config.max_length
  for batch in batch_sizes:
    dynamic = speed.length_batches(teacher.tokenizer, timed, batch, max_length)
    static = speed.length_batches(teacher.tokenizer, timed, batch, max_length, dynamic=False)
    own = {name: static if 'static length' in name else dynamic for name in runners}
    rates = speed.sequences_per_second(runners, own, rounds)
    for name, rate in rates.items():
      if name not in by_name:
        by_name[name] = {'model': name}
        rows.append(by_name[name])
      by_name[name][f'seq_s_b{batch}'] = rate
    for row in rows:
      row[f'speedup_b{batch}'] = row[f'seq_s_b{batch}'] / rates['teacher, static length']
      if torch:
        row[f'vs_transformers_b{batch}'] = (row[f'seq_s_b{batch}']
                                            / rates['transformers teacher'])
  return rows


def markdown_table(rows: Sequence[dict], metric: str, batches: Sequence[int]) -> str:
  """The rows as a markdown table: metric, size and per-batch speed and speed-up."""
  head = (f'| model | dev {metric} | params | MB on disk | '
          + ' | '.join(f'seq/s b{b} | x teacher b{b}' for b in batches) + ' |')
  lines = [head, '|' + '---|' * (4 + 2 * len(batches))]
  for r in rows:
    cells = [r['model'], f'{r[metric]:.2f}' if metric in r else '-',
             f'{r["params"] / 1e6:.1f}M' if 'params' in r else '-',
             f'{r["bytes_on_disk"] / 1e6:.1f}' if 'bytes_on_disk' in r else '-']
    for b in batches:
      cells += [f'{r[f"seq_s_b{b}"]:.1f}', f'{r[f"speedup_b{b}"]:.2f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def parse_runs(text: str) -> dict[str, str]:
  """'a=runs/x,b=runs/y:latest' -> {'a': 'runs/x', ...}; names must be unique."""
  out = specs.fields(text, convert=str, what='runs (name=folder,...)')
  if not out:
    raise ValueError('runs names no run (name=folder,...)')
  if 'teacher' in out or any(not name or not folder for name, folder in out.items()):
    raise ValueError(f'runs {text!r}: entries are name=folder, and "teacher" is taken')
  return out


def compare(teacher: str, runs: Mapping[str, str], out: str, *, eval_examples: int = 0,
            sentences: int = 256, batch_sizes: Sequence[int] = (1, 32), rounds: int = 3,
            torch: bool = True) -> dict[str, Any]:
  """`measure`, then compare.json and compare.png (the Pareto plot) in `out`."""
  rows = measure(teacher, runs, eval_examples=eval_examples, sentences=sentences,
                 batch_sizes=batch_sizes, rounds=rounds, torch=torch)
  metric = run_data.main_metric(teacher)
  os.makedirs(out, exist_ok=True)
  plot = plots.pareto(rows, metric, batch_sizes[-1], os.path.join(out, 'compare.png'),
                      title='saved runs')
  report = {'teacher': teacher, 'metric': metric, 'rows': rows, 'plot': plot,
            'table': markdown_table(rows, metric, batch_sizes)}
  with open(os.path.join(out, 'compare.json'), 'w') as f:
    json.dump(report, f, indent=2)
  return report
