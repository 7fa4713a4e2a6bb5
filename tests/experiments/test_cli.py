"""The experiment scripts are command lines only: flags plus one library call.

Each script parses its flags (`--help` exits cleanly, so every import and flag
definition works) and defines no function but `main`: anything a test, a notebook or
another script needs lives in `research/` (tests/test_import_direction.py checks that
no script imports another).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.stem for p in (ROOT / 'experiments').glob('*.py') if p.stem != '__init__')


@pytest.mark.parametrize('script', SCRIPTS)
def test_script_defines_only_main(script):
  tree = ast.parse((ROOT / 'experiments' / f'{script}.py').read_text())
  defined = [node.name for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
  assert defined in ([], ['main']), f'experiments/{script}.py defines {defined}'


@pytest.mark.slow
def test_every_script_parses_its_flags():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  failed = {}
  for script in SCRIPTS:
    proc = subprocess.run([sys.executable, '-m', f'experiments.{script}', '--help'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # absl's --help prints the usage and exits with 1; argparse's with 0.
    if proc.returncode not in (0, 1) or 'Traceback' in proc.stderr or not proc.stdout.strip():
      failed[script] = proc.stderr[-1500:]
  assert not failed, failed
