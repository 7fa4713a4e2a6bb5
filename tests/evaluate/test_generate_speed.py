"""benchmarks/generate_speed.py: a tiny greedy run agrees with transformers token for token;
a sampling run ends with its JSON line too."""
from __future__ import annotations

import json

import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

TINY = ['--layers', '1', '--hidden', '32', '--heads', '2', '--vocab', '64', '--batch', '2',
        '--prompt', '4', '--new_tokens', '3', '--rounds', '1']


@pytest.mark.parametrize('extra', [[], ['--top_k', '5']])
def test_smoke_run_prints_its_figures(load_benchmark, capsys, extra):
  load_benchmark('generate_speed').main(TINY + extra)
  out = capsys.readouterr().out
  figures = json.loads(out.strip().splitlines()[-1])
  assert figures['ours'] > 0 and figures['torch'] > 0 and figures['top_k'] == int(
      (extra or ['', '0'])[1])
  if not extra:  # greedy: both sides decode the same tokens
    assert 'identical to transformers: 100.0%' in out
