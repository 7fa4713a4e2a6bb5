"""The FastFormers chain killed in the middle of each stage's writing resumes to the
same runs: every stage's params bit-identical to an uninterrupted chain's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

RUNNER = Path(__file__).resolve().parents[1] / 'train' / 'run_killable.py'


def chain(teacher, workdir, out, kill_in=None):
  env = {**os.environ, **({'KILL_IN': kill_in} if kill_in else {})}
  proc = subprocess.run([sys.executable, str(RUNNER), 'compress', f'{teacher}:best',
                         str(workdir), str(out)], env=env, capture_output=True, text=True,
                        timeout=900)
  return proc


@pytest.mark.slow
def test_a_chain_killed_in_each_stage_resumes_to_the_same_runs(make_tiny_run, tmp_path):
  teacher = make_tiny_run(2)
  done = chain(teacher, tmp_path / 'reference', tmp_path / 'reference.npz')
  assert done.returncode == 0, done.stderr[-3000:]
  workdir, out = tmp_path / 'killed', tmp_path / 'killed.npz'
  # Each stage's folder, killed while its checkpoint is being written (the trained
  # stages mid-run, the written ones while write_run stages them), then the next rerun.
  for stage in ('L1/init', 'L1/distilled', 'L1/pruned', 'L1/recovered', 'L1/int8'):
    killed = chain(teacher, workdir, out, kill_in=stage)
    assert killed.returncode == -signal.SIGKILL, (stage, killed.stderr[-3000:])
  done = chain(teacher, workdir, out)
  assert done.returncode == 0, done.stderr[-3000:]
  a, b = np.load(tmp_path / 'reference.npz'), np.load(out)
  assert a.files == b.files and any(k.startswith('int8/') for k in a.files)
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert not [p for p in os.listdir(workdir / 'L1') if p.endswith('.partial')]
