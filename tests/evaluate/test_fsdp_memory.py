"""benchmarks/fsdp_memory.py: with 4 forced host devices each holds a quarter of the split
state (params, Adam moments, EMA); bad input is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_four_devices_each_hold_about_a_quarter_of_the_state():
  proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'fsdp_memory.py'),
                         '--fsdp', '4', '--ema', '0.9'],
                        env={k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'},
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  for part in ('params', 'opt_state', 'ema'):
    share = result[f'{part}_max_device_mb'] / result[f'{part}_total_mb']
    # Vectors without an 'embed' axis (biases, LayerNorms) stay whole: a bit over 1/4.
    assert 0.25 <= share < 0.3, (part, share)
  assert result['opt_state_total_mb'] == pytest.approx(2 * result['params_total_mb'], rel=1e-3)


def test_refuses_fsdp_below_one(load_benchmark):
  with pytest.raises(SystemExit, match='--fsdp must be >= 1'):
    load_benchmark('fsdp_memory').parse_args(['--fsdp', '0'])
