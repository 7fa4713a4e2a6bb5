r"""XLA:CPU's paths for our encoder: every flag set x precision x shape, in one process.

    python benchmarks/xla_cpu_paths.py                          # bundled MiniLM-L6
    python benchmarks/xla_cpu_paths.py --flag_sets default,onednn,ynn_dot --shapes 8x512
    python benchmarks/xla_cpu_paths.py --precisions int8 --rounds 5

The encoder at float32, bf16 and int8 (`research/evaluate/precisions.py`, the same three
`benchmarks/inference_cpu.py` compares with PyTorch) is compiled once per flag set of
`research/xla_cpu.FLAG_SETS` (per-compilation options, so all live in one process), and
per shape every (flag set, precision) is timed in alternated rounds, so drifting load
hits all alike. Per cell: sequences/s (the best round's median call), its ratio to the
default flags at the same precision, the largest deviation of its output from the
default flags' output, and the work units XLA produced (fusion kinds and library calls,
`xla_cpu.fusion_summary`). A flag set whose compiled program is identical to an earlier
one's is not timed again (marked '='): the flag changed nothing for this model (codegen
flags, which leave the HLO text alone, are always timed). Flag
sets are first run on a tiny encoder in a child process, since some abort the process. A flag set that XLA rejects or that fails to
compile is reported as such and skipped. Ends with one JSON line:
{"cpu_flags": [...], "figures": {shape: {precision: {flag_set: seq/s}}},
 "fusions": {precision: {flag_set: {kind: count}}} (at the first shape)}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from research import specs, xla_cpu  # pylint: disable=wrong-import-position
from research.checkpoints import load_pretrained  # pylint: disable=wrong-import-position
from research.checkpoints.hf_load import load_tokenizer  # pylint: disable=wrong-import-position
from research.data.sources import default_data_dir, load_examples  # pylint: disable=wrong-import-position
from research.evaluate import precisions as prec  # pylint: disable=wrong-import-position
from research.evaluate.speed import cpu_flags, step_medians  # pylint: disable=wrong-import-position


def probe(name: str) -> None:
  """Compiles and runs a tiny encoder at every precision under flag set `name`.

  Run in a child process (`--probe`): some experimental XLA:CPU paths abort the whole
  process when the compiled module runs (oneDNN fusion types: "partition compile
  failed"), which no exception handler can catch.
  """
  from research.models import init_params  # pylint: disable=g-import-not-at-top
  from research.models.config import EncoderConfig  # pylint: disable=g-import-not-at-top
  config = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                         intermediate_size=64)
  ids = np.ones((2, 8), np.int32)
  models = prec.inference_precisions(config, init_params(config, jax.random.PRNGKey(0)),
                                     [{'input_ids': ids, 'attention_mask': ids}])
  for cfg, prm in models.values():
    compiled = xla_cpu.compile_with(prec.encoder_forward(cfg).lower(prm, ids, ids),
                                    xla_cpu.FLAG_SETS[name])
    jax.block_until_ready(compiled(prm, ids, ids))


def survives(name: str) -> str | None:
  """None when flag set `name` compiles and runs in a child process, else why not."""
  run = subprocess.run([sys.executable, os.path.abspath(__file__), '--probe', name],
                       capture_output=True, text=True, check=False)
  if run.returncode == 0:
    return None
  lines = [l for l in (run.stderr + run.stdout).splitlines() if l.strip()
           and 'warn' not in l.lower()]
  return f'exit {run.returncode}: {lines[-1] if lines else "no output"}'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='minilm-l6')
  p.add_argument('--data_dir', default=default_data_dir())
  p.add_argument('--shapes', default='1x128,8x64,32x128,8x512')
  p.add_argument('--precisions', default=','.join(prec.PRECISIONS))
  p.add_argument('--flag_sets', default=','.join(xla_cpu.FLAG_SETS))
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--repeats', type=int, default=3, help='timed calls per cell per round')
  p.add_argument('--calibration_sentences', type=int, default=512)
  p.add_argument('--probe', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.probe:
    probe(args.probe)
    return
  flag_sets = specs.items(args.flag_sets, what='--flag_sets')
  unknown = sorted(set(flag_sets) - set(xla_cpu.FLAG_SETS))
  if unknown:
    p.error(f'unknown flag sets {unknown}; known: {sorted(xla_cpu.FLAG_SETS)}')
  if 'default' not in flag_sets:
    flag_sets = ['default'] + flag_sets  # the ratios' reference

  failed = {}
  for name in flag_sets[1:]:
    why = survives(name)
    if why:
      failed[name] = f'the process dies running a tiny encoder: {why}'
      print(f'flag set {name}: {failed[name]}', flush=True)
  flag_sets = [n for n in flag_sets if n not in failed]

  config, params = load_pretrained(args.model)
  tokenizer = load_tokenizer(args.model)
  train = [e['text_a'] for e in load_examples('sst2', 'train', args.data_dir)]
  dev = [e['text_a'] for e in load_examples('sst2', 'validation', args.data_dir)]
  models = prec.inference_precisions(
      config, params, prec.calibration_batches(tokenizer, train[:args.calibration_sentences]),
      precisions=specs.items(args.precisions, what='--precisions'))
  print(f'model={args.model} cpus={os.cpu_count()} cpu_flags={",".join(cpu_flags())} '
        f'jax={jax.__version__} backend={jax.default_backend()}', flush=True)

  figures, fusions, errors, same = {}, {}, {}, {}
  for s, shape in enumerate(specs.items(args.shapes, what='--shapes')):
    batch, length = (int(v) for v in shape.split('x'))
    b = prec.fixed_batch(tokenizer, dev, batch, length)
    calls, programs = {}, {}
    for precision, (cfg, prm) in models.items():
      lowered = prec.encoder_forward(cfg).lower(prm, b['input_ids'], b['attention_mask'])
      reference = None
      for name in flag_sets:
        try:
          compiled = xla_cpu.compile_with(lowered, xla_cpu.FLAG_SETS[name])
          out = np.asarray(compiled(prm, b['input_ids'], b['attention_mask']), np.float32)
        except Exception as e:  # pylint: disable=broad-except
          failed[f'{shape} {precision} {name}'] = str(e).splitlines()[0][:200]
          continue
        program = compiled.as_text()
        twin = (None if xla_cpu.changes_codegen(xla_cpu.FLAG_SETS[name])
                else programs.get((precision, program)))
        if twin:  # the flags changed nothing here: the same program, timed once
          same[(shape, precision, name)] = twin
          continue
        programs.setdefault((precision, program), name)
        reference = out if name == 'default' else reference
        # Every path must compute the same function: its largest deviation from the
        # default flags' output (real tokens only).
        real = b['attention_mask'] > 0
        errors.setdefault(shape, {}).setdefault(precision, {})[name] = float(
            np.abs(out - reference)[real].max()) if reference is not None else None
        if s == 0:
          fusions.setdefault(precision, {})[name] = xla_cpu.fusion_summary(program)
        calls[(precision, name)] = (
            lambda c=compiled, p_=prm: jax.block_until_ready(
                c(p_, b['input_ids'], b['attention_mask'])))
    seconds = step_medians({f'{k[0]} {k[1]}': f for k, f in calls.items()}, warmup=1,
                           rounds=args.rounds, per_round=args.repeats)
    figures[shape] = {}
    for (precision, name) in calls:
      figures[shape].setdefault(precision, {})[name] = batch / min(
          seconds[f'{precision} {name}'])
    for (at, precision, name), twin in same.items():
      if at == shape:
        figures[shape][precision][name] = figures[shape][precision][twin]
    print(f'\n{shape}: sequences/s (ratio to default flags, same precision)')
    print(f'{"flag set":>15} ' + ' '.join(f'{x:>17}' for x in models))
    for name in flag_sets:
      cells = []
      for precision in models:
        v = figures[shape].get(precision, {}).get(name)
        ref = figures[shape].get(precision, {}).get('default')
        mark = '=' if (shape, precision, name) in same else ' '
        cells.append(f'{v:8.1f} ({v / ref:4.2f}){mark}' if v and ref else f'{"failed":>17}')
      print(f'{name:>15} ' + ' '.join(f'{c:>17}' for c in cells), flush=True)
    print('  (= the same compiled program as an earlier flag set: its figure, timed once)')

  print('\nwork units per flag set (first shape):')
  for precision, by_set in fusions.items():
    for name, summary in by_set.items():
      print(f'  {precision:>8} {name:>15}: {summary}')
  print('largest |output - default flags\' output| per flag set:', errors)
  for key, why in failed.items():
    print(f'failed: {key}: {why}')
  best = {shape: {precision: max(f, key=f.get) for precision, f in by.items()}
          for shape, by in figures.items()}
  print('best flag set per shape and precision:', best)
  print(json.dumps({'cpu_flags': cpu_flags(), 'figures': {
      shape: {precision: {n: round(v, 2) for n, v in f.items()} for precision, f in by.items()}
      for shape, by in figures.items()}, 'fusions': fusions, 'failed': failed,
                    'max_abs_error': errors,
                    'same_program': {' '.join(k): v for k, v in same.items()}}))


if __name__ == '__main__':
  main()
