"""The FastFormers chain and a study, unchanged, as 2 processes x 2 CPU devices: the
trained stages run on both, the single-host stages (transforms, pruning, speed) on
process 0, and every stage's params match a 1-process x 4-device run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from research.train import saved_runs

ROOT = Path(__file__).resolve().parents[2]
STAGES = ('init', 'distilled', 'pruned', 'recovered', 'int8')


def command(processes: int, args: list[str]):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if processes == 1:
    env['RESEARCH_CPU_DEVICES'] = '4'
    prefix = []
  else:
    prefix = [sys.executable, '-m', 'experiments.launch', '--processes', str(processes),
              '--cpu_devices', '2', '--']
  out = subprocess.run(prefix + [sys.executable, '-m'] + args, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def params(folder: str) -> dict:
  return traverse_util.flatten_dict(saved_runs.restore_params(folder, 'best')[0], sep='/')


def test_the_pipeline_as_two_processes(make_tiny_run, tmp_path):
  teacher = make_tiny_run(2)
  printed = {}
  for processes in (1, 2):
    printed[processes] = command(processes, [
        'experiments.compress', '--config', 'experiments/configs/fastformers.py:runlocal',
        '--teacher', f'{teacher}:best', '--workdir', str(tmp_path / str(processes)),
        '--config.speed.torch=False'])
  assert printed[2].count('"benchmark": "fastformers_pipeline"') == 1  # process 0 reports
  reports = [json.loads((tmp_path / str(p) / 'pipeline.json').read_text()) for p in (1, 2)]
  accuracy = [{r['model']: r.get('accuracy') for r in rep['rows']} for rep in reports]
  assert accuracy[0] == accuracy[1]
  for stage in STAGES:
    one, two = (params(str(tmp_path / str(p) / 'L1' / stage)) for p in (1, 2))
    assert sorted(one) == sorted(two), stage
    for key in one:
      np.testing.assert_allclose(np.asarray(two[key], np.float32),
                                 np.asarray(one[key], np.float32), rtol=1e-4, atol=1e-5,
                                 err_msg=f'{stage} {key}')
  assert not list((tmp_path / '2' / 'L1').glob('*.partial'))


def test_a_study_as_two_processes(tmp_path):
  """The freezing study (its own run folders, cleared and dropped per preset) as 2
  processes: the same rows as one process, one report."""
  data = ROOT.parent / 'shared' / 'data'
  if not (data / 'glue' / 'SST-2' / 'train.tsv').is_file():
    pytest.skip('SST-2 TSVs not found in ../shared/data')
  rows = {}
  for processes in (1, 2):
    out = tmp_path / str(processes)
    printed = command(processes, [
        'experiments.freezing', '--config', 'experiments/configs/freezing.py:runlocal',
        '--config.presets=full,bitfit', f'--config.data_dir={data / "glue"}', '--out', str(out)])
    assert printed.count('# ') == 1  # the report's title, printed by process 0 only
    rows[processes] = json.loads((out / 'results.json').read_text())['rows']
    assert sorted(os.listdir(out)) == ['results.json', 'results.md']  # run folders dropped
  for one, two in zip(rows[1], rows[2]):
    for key in ('preset', 'dev_accuracy', 'trainable_params', 'optimizer_state_bytes'):
      assert one[key] == two[key], key
