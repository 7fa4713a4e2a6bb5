"""Executes the notebooks end to end in their tiny mode and checks what they print.

Each notebook runs in a fresh python3 kernel (the one installed in the venv), with
NOTEBOOK_TINY=1 and the repo root as its working directory, as CI does.
"""
from __future__ import annotations

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
  parts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      if out.get('output_type') == 'stream' and out.get('name') == 'stdout':
        parts.append(out['text'])
      elif 'data' in out and 'text/plain' in out['data']:
        parts.append(out['data']['text/plain'])
  return '\n'.join(parts)


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
  for m in re.finditer(r'^(\S+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)%\s+([\d,]+)\s*$', text,
                       re.MULTILINE):
    rows[m.group(1)] = dict(acc=float(m.group(2)), trainable=int(m.group(3).replace(',', '')),
                            state=int(m.group(5).replace(',', '')))
  assert set(rows) == {'full', 'feature_extractor', 'bitfit', 'bottom:3'}, text
  for r in rows.values():
    assert 0 <= r['acc'] <= 100
  order = ['feature_extractor', 'bitfit', 'bottom:3', 'full']
  trainable = [rows[n]['trainable'] for n in order]
  state = [rows[n]['state'] for n in order]
  assert trainable == sorted(trainable) and len(set(trainable)) == 4, rows
  assert state == sorted(state) and len(set(state)) == 4, rows
  # MiniLM-L6 has ~22.7M parameters; the frozen-encoder head + mix is under 1k.
  assert rows['full']['trainable'] > 2e7
  assert rows['feature_extractor']['trainable'] < 2000
  # AdamW: two float32 moments per trainable parameter (+ small step counters).
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
                                   speed=float(m.group(4)))
          for m in re.finditer(r'^(float32|int8 .+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$',
                               text, re.MULTILINE)}
  assert set(rows) == {'float32', 'int8 PTQ (max)', 'int8 PTQ (percentile)',
                       'int8 PTQ (mse)', 'int8 QAT w8a8 (max)'}, text
  for name, row in rows.items():
    assert 0 <= row['acc'] <= 100 and row['speed'] > 0, (name, row)
    if name != 'float32':
      # int8 projection kernels: a quarter of their float32 bytes (embeddings stay float).
      assert row['mb'] < 0.8 * rows['float32']['mb'], (name, row, rows['float32'])
