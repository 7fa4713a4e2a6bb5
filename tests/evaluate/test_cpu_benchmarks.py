"""benchmarks/cpu_kernels.py and xla_cpu_paths.py: smoke runs and the crash probe."""
from __future__ import annotations

import json

import jax
import pytest

pytest.importorskip('torch')


def test_kernels_smoke_run_prints_its_figures(load_benchmark, capsys):
  load_benchmark('cpu_kernels').main(['--dots', '16x32x24', '--attention', '1x2x16x8',
                                      '--rounds', '1', '--repeats', '1'])
  figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert figures['cpu_flags']
  assert set(figures['dots_gops']['16x32x24']) == {
      'ours_float32', 'ours_bfloat16', 'ours_int8_s8s8', 'ours_int8_u8s8', 'torch_float32',
      'torch_bfloat16', 'torch_int8_dynamic'}
  assert all(v > 0 for v in figures['attention_ms']['1x2x16x8'].values())


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU flags')
def test_paths_probe_runs_each_flag_set_in_a_child(load_benchmark):
  """A flag set whose module kills the process (jaxlib 0.10.2 on AVX-512: the oneDNN
  fusion types) is found in a child process; the parent gets the reason."""
  paths = load_benchmark('xla_cpu_paths')
  assert paths.survives('default') is None
  why = paths.survives('no_such_flag_set')  # the child fails: its exit and last line
  assert why.startswith('exit 1') and 'no_such_flag_set' in why
