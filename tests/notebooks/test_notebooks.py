"""Executes the notebooks end to end in their tiny mode and checks what they print.

Each notebook runs in a fresh python3 kernel (the one installed in the venv), with
NOTEBOOK_TINY=1 and the repo root as its working directory, as CI does. The notebook is
executed in memory: the stored file (executed at CPU size, with its outputs) is not
touched.
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / 'notebooks'
CELL_TIMEOUT_S = 600  # generous: shared 2-core CI machines compile slowly


def execute(name: str) -> nbformat.NotebookNode:
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  env = {**os.environ, 'NOTEBOOK_TINY': '1', 'HF_HUB_OFFLINE': '1',
         'TRANSFORMERS_OFFLINE': '1', 'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3')
  # jupyter_client launches a 'python' kernelspec with sys.executable, i.e. this venv.
  client.execute(cwd=str(ROOT), env=env)  # raises CellExecutionError on a failing cell
  return nb


def stream_text(nb) -> str:
  """What the cells printed and displayed as text (a displayed markdown table as its
  markdown source)."""
  parts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      if out.get('output_type') == 'stream' and out.get('name') == 'stdout':
        parts.append(out['text'])
      elif 'data' in out:
        for kind in ('text/markdown', 'text/plain'):
          if kind in out['data']:
            parts.append(out['data'][kind])
            break
  return '\n'.join(parts)


def code_cells(path: Path) -> list[str]:
  return [cell['source'] for cell in nbformat.read(path, as_version=4).cells
          if cell['cell_type'] == 'code']


@pytest.fixture(scope='module')
def transfer_nb():
  return execute('01_transfer_learning.ipynb')


def test_transfer_learning_runs_without_errors(transfer_nb):
  errors = [out for cell in transfer_nb.cells for out in cell.get('outputs', [])
            if out.get('output_type') == 'error']
  assert not errors, errors
  assert 'tiny=True' in stream_text(transfer_nb)


def test_scalar_mix_weights_are_a_distribution_and_plotted(transfer_nb):
  text = stream_text(transfer_nb)
  line = re.search(r'scalar-mix weights: ([\d. ]+)', text)
  assert line, text
  weights = [float(w) for w in line.group(1).split()]
  assert len(weights) == 7  # embeddings + 6 layers of MiniLM-L6
  assert all(0 < w < 1 for w in weights)
  assert abs(sum(weights) - 1) < 1e-3  # printed to 4 decimals
  assert float(re.search(r'sum = ([\d.]+)', text).group(1)) == pytest.approx(1, abs=1e-5)
  images = [out for cell in transfer_nb.cells for out in cell.get('outputs', [])
            if 'image/png' in out.get('data', {})]
  assert len(images) == 1


def test_freezing_table_orders_presets_by_trainable_params(transfer_nb):
  text = stream_text(transfer_nb)
  rows = {}
  for m in re.finditer(r'^(\S+)\s+([\d.e+-]+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)%\s+([\d,]+)'
                       r'\s+(\d+)\s*$', text, re.MULTILINE):
    rows[m.group(1)] = dict(lr=float(m.group(2)), acc=float(m.group(3)),
                            trainable=int(m.group(4).replace(',', '')),
                            state=int(m.group(6).replace(',', '')), wall=int(m.group(7)))
  assert set(rows) == {'full', 'feature_extractor', 'bitfit', 'bottom:3', 'lora:8'}, text
  for r in rows.values():
    assert 0 <= r['acc'] <= 100 and r['lr'] > 0
  order = ['feature_extractor', 'bitfit', 'lora:8', 'bottom:3', 'full']
  trainable = [rows[n]['trainable'] for n in order]
  state = [rows[n]['state'] for n in order]
  assert trainable == sorted(trainable) and len(set(trainable)) == 5, rows
  assert state == sorted(state) and len(set(state)) == 5, rows
  # MiniLM-L6 has ~22.7M parameters; the frozen-encoder head + mix is under 1k.
  assert rows['full']['trainable'] > 2e7
  assert rows['feature_extractor']['trainable'] < 2000
  # LoRA rank 8 on query and value of 6 layers: 6 * 2 * 8 * (384 + 384) factors + the head.
  assert rows['lora:8']['trainable'] - rows['feature_extractor']['trainable'] == 6 * 2 * 8 * 768
  # AdamW: two float32 moments per trainable parameter (+ small step counters); LoRA's
  # frozen kernels hold none.
  for r in rows.values():
    assert 8 * r['trainable'] <= r['state'] <= 8 * r['trainable'] + 1024


def test_notebook_installs_only_extras_the_project_defines():
  """A `pip install -e 'repo[extra]'` in a notebook must name an extra of pyproject.toml."""
  import tomllib  # pylint: disable=g-import-not-at-top
  extras = set(tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
               ['optional-dependencies'])
  for path in NOTEBOOKS.glob('*.ipynb'):
    source = '\n'.join(''.join(cell['source']) for cell in nbformat.read(path, as_version=4).cells)
    for match in re.finditer(r"research_repo\[([\w,]+)\]", source):
      assert set(match.group(1).split(',')) <= extras, (path.name, match.group(0))
    assert 'from experiments' not in source and 'import experiments' not in source, path.name


def test_notebooks_call_the_library_not_scripts():
  """No script runs from a notebook (no `python -m experiments...` subprocess): a
  subprocess appears only in the Colab setup cell (git clone, pip install)."""
  for path in NOTEBOOKS.glob('*.ipynb'):
    for code in code_cells(path):
      assert 'experiments' not in code and 'run_experiment' not in code, (path.name, code)
      if 'subprocess' in code or code.lstrip().startswith('!'):
        assert "'google.colab' in sys.modules" in code, (path.name, code)


@pytest.fixture(scope='module')
def quantization_nb():
  return execute('02_quantization.ipynb')


def test_quantization_table_has_every_model_and_int8_is_smaller_on_disk(quantization_nb):
  errors = [out for cell in quantization_nb.cells for out in cell.get('outputs', [])
            if out.get('output_type') == 'error']
  assert not errors, errors
  text = stream_text(quantization_nb)
  assert 'tiny=True' in text
  rows = {m.group(1).strip(): dict(acc=float(m.group(2)), mb=float(m.group(3)),
                                   b1=float(m.group(4)), b8=float(m.group(5)),
                                   factor=float(m.group(6)))
          for m in re.finditer(r'^(float32|int8 .+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)'
                               r'\s+([\d.]+)\s*$', text, re.MULTILINE)}
  assert set(rows) == {'float32', 'int8 PTQ (max)', 'int8 PTQ (percentile)',
                       'int8 PTQ (mse)', 'int8 QAT w8a8 (max)'}, text
  assert re.search(r'^float32, static length\s+-\s+-\s+[\d.]+\s+[\d.]+\s+[\d.]+$', text,
                   re.MULTILINE), text
  assert rows['float32']['factor'] == 1.0
  for name, row in rows.items():
    assert 0 <= row['acc'] <= 100 and row['b1'] > 0 and row['b8'] > 0, (name, row)
    if name != 'float32':
      # int8 projection kernels: a quarter of their float32 bytes (embeddings stay float).
      assert row['mb'] < 0.8 * rows['float32']['mb'], (name, row, rows['float32'])
  assert len(png_outputs(quantization_nb)) == 1  # the Pareto plot


def output_errors(nb) -> list:
  return [out for cell in nb.cells for out in cell.get('outputs', [])
          if out.get('output_type') == 'error']


def png_outputs(nb) -> list:
  return [out for cell in nb.cells for out in cell.get('outputs', [])
          if 'image/png' in out.get('data', {})]


@pytest.fixture(scope='module')
def distill_prune_nb():
  return execute('03_distill_prune.ipynb')


def test_distill_prune_reports_every_stage_its_speedups_and_both_plots(distill_prune_nb):
  nb = distill_prune_nb
  assert not output_errors(nb), output_errors(nb)
  text = stream_text(nb)
  assert 'tiny=True' in text
  stages = {'teacher', 'L1 distilled', 'L1 pruned', 'L1 recovered', 'L1 int8'}
  models = re.search(r"^\[('teacher'.*)\]$", text, re.MULTILINE)
  assert models, text
  assert set(re.findall(r"'([^']+)'", models.group(1))) == stages | {'teacher, static length'}

  # Sixteen Heads (step 0.25 of MiniLM-L6's 6 x 12 heads): 0, 18, 36, 54, 71 masked.
  curve = [(int(m.group(1)), int(m.group(2)), float(m.group(3))) for m in
           re.finditer(r'^ *(\d+) +(\d+) +([\d.]+)$', text, re.MULTILINE)]
  assert [c[0] for c in curve] == [0, 18, 36, 54, 71], text
  assert all(c[1] == 72 and 0 <= c[2] <= 100 for c in curve), curve

  # Each stage's own speed-up over the one before it, at batch 1 and 32.
  speedups = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in re.finditer(
      r'^L1\s+(dynamic length|distillation|pruning|int8)\s+([\d.]+)x at b1\s+([\d.]+)x at b32$',
      text, re.MULTILINE)}
  assert set(speedups) == {'dynamic length', 'distillation', 'pruning', 'int8'}, text
  assert all(a > 0 and b > 0 for a, b in speedups.values()), speedups

  # The markdown table `compress` returns, displayed.
  rows = {m.group(1): dict(acc=float(m.group(2)), params=float(m.group(3)),
                           mb=float(m.group(4)), b1=float(m.group(5)), b32=float(m.group(7)))
          for m in re.finditer(r'^\| ([^|]+?) \| ([\d.]+) \| ([\d.]+)M \| ([\d.]+) \| '
                               r'([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$',
                               text, re.MULTILINE)}
  assert set(rows) == stages, text
  for name, row in rows.items():
    assert 0 <= row['acc'] <= 100 and row['b1'] > 0 and row['b32'] > 0, (name, row)
  # One of six layers kept (~13.8M of 22.7M: the embeddings stay), then heads/FFN removed.
  assert rows['L1 pruned']['params'] < rows['L1 distilled']['params'] < rows['teacher']['params']
  # int8 kernels take a quarter of their float bytes; the float embeddings dominate.
  assert rows['L1 int8']['mb'] < rows['L1 recovered']['mb'] < rows['teacher']['mb']
  assert len(png_outputs(nb)) == 2  # the Sixteen Heads curve and the Pareto plot


@pytest.fixture(scope='module')
def pretraining_nb():
  return execute('04_pretraining.ipynb')


def test_pretraining_fine_tunes_from_tapt_and_samples_the_decoder(pretraining_nb):
  nb = pretraining_nb
  assert not output_errors(nb), output_errors(nb)
  text = stream_text(nb)
  assert 'tiny=True' in text
  tapt = re.search(r'TAPT step (\d+): held-out MLM accuracy ([\d.]+) %, perplexity ([\d.]+)',
                   text)
  assert tapt and int(tapt.group(1)) == 6, text  # pretrain.py:runlocal's 6 steps
  assert 0 <= float(tapt.group(2)) <= 100 and float(tapt.group(3)) > 1
  accuracies = dict(re.findall(r'^SST-2 dev accuracy (with TAPT|without TAPT): ([\d.]+)$',
                               text, re.MULTILINE))
  assert set(accuracies) == {'with TAPT', 'without TAPT'}, text
  assert all(0 <= float(a) <= 100 for a in accuracies.values())

  assert re.search(r'^2 layers, hidden 32, ', text, re.MULTILINE), text
  decoder = re.search(r'decoder step (\d+): held-out next-token accuracy ([\d.]+) %, '
                      r'perplexity ([\d.]+)', text)
  assert decoder and int(decoder.group(1)) == 6, text
  # A near-random model over MiniLM's 30,522 tokens: perplexity far above 1, finite.
  assert 0 <= float(decoder.group(2)) <= 100 and 1 < float(decoder.group(3)) < 1e6

  samples = {(m.group(1), ast.literal_eval(m.group(2))): ast.literal_eval(m.group(3))
             for m in re.finditer(r'^\[(greedy|top-p 0\.9)\] (.+?) -> (.+)$', text,
                                  re.MULTILINE)}
  prompts = ['ROMEO:', 'First Citizen:', 'To be, or not to be']
  assert set(samples) == {(mode, p) for mode in ('greedy', 'top-p 0.9') for p in prompts}, text
  for key, sample in samples.items():
    assert isinstance(sample, str) and sample.strip(), (key, sample)
  assert len(png_outputs(nb)) == 1  # the decoder's training curves
