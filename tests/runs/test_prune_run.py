"""research/runs/prune.py (and experiments/prune.py) on a tiny saved run: pruned runs reload, start runs, export; the
Sixteen Heads mode through its command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.runs import prune as prune_run
from research.train import saved_runs
from research.runs import export

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def tiny_run(make_tiny_run):
  """A random 2-layer, 4-head, 32-wide SST-2 classifier saved as a run (MiniLM tokenizer)."""
  return make_tiny_run(2)


def test_pruned_run_reloads_starts_runs_and_exports(tiny_run, tmp_path):
  out = tmp_path / 'pruned'
  summary = prune_run.prune_run(f'{tiny_run}:best', str(out), heads_fraction=0.5,
                                   ffn_fraction=0.25, importance_examples=32)
  assert summary['layers_before'] == {'heads': [4, 4], 'ffn': [64, 64]}
  assert sum(summary['layers_after']['heads']) == 4  # 50 % of 8 heads
  assert sum(summary['layers_after']['ffn']) == 96   # 25 % of 128 neurons
  # Each head held 3 * (32 * 8 + 8) + 8 * 32 weights, each neuron 32 + 1 + 32.
  assert summary['params_before'] - summary['params_after'] == 4 * 1048 + 32 * 65
  assert 0.0 <= summary['before'] <= 100.0 and 0.0 <= summary['after'] <= 100.0

  run = saved_runs.load_run(str(out))  # rebuilt from its own model.json
  assert [run.model.encoder.heads(i) for i in range(2)] == summary['layers_after']['heads']
  assert [run.model.encoder.ffn(i) for i in range(2)] == summary['layers_after']['ffn']
  # `--config.init_from` takes every part of it (same task: the head too).
  ids = jnp.ones((1, 8), jnp.int32)
  fresh = nn.meta.unbox(run.model.init(jax.random.PRNGKey(1), ids, ids)['params'])
  params, fresh_parts = saved_runs.init_params(f'{out}:best', run.model, fresh)
  assert fresh_parts == []
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(run.params)):
    np.testing.assert_array_equal(a, b)

  # A Hugging Face folder with the pruned heads padded back: same logits in transformers.
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  export.export_run(str(out), str(tmp_path / 'hf'))
  reloaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(tmp_path / 'hf'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  ids = np.random.default_rng(0).integers(1000, 2000, (2, 9))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  with torch.no_grad():
    ref = reloaded.eval()(input_ids=torch.from_numpy(ids),
                          attention_mask=torch.from_numpy(mask)).logits.numpy()
  logits, _ = run.model.apply({'params': run.params}, ids, mask)
  np.testing.assert_allclose(logits, ref, atol=1e-4)
  if len(set(summary['layers_after']['ffn'])) > 1:  # no unpadded HF form for these
    with pytest.raises(ValueError, match='per-layer FFN widths'):
      export.export_run(str(out), str(tmp_path / 'hf_unpadded'), pad=False)

  # Iterative: one round of 25 % of the heads, accepted at any ratio above 0.
  rounds = prune_run.prune_run(f'{tiny_run}:best', str(tmp_path / 'iterative'),
                                  heads_fraction=0.25, importance_examples=32,
                                  iterative=True, min_ratio=1e-6, max_rounds=1)
  assert [c['heads'] for c in rounds['curve']] == [8, 6]
  assert rounds['after'] == rounds['curve'][-1]['metric']
  with pytest.raises(ValueError, match='heads_fraction must be in'):
    prune_run.prune_run(f'{tiny_run}:best', str(tmp_path / 'bad'), heads_fraction=1.0)


def test_sixteen_heads_command_line(tiny_run, tmp_path):
  out = tmp_path / 'sixteen'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.prune', f'--run={tiny_run}:best', f'--out={out}',
       '--sixteen_heads', '--importance_examples=32', '--eval_examples=32',
       '--throughput_batch=4', '--throughput_repeats=2'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert 'heads can go' in result.stdout
  curve = json.loads((out / 'sixteen_heads.json').read_text())['curve']
  # 10 % steps of 8 heads, rounded, never all: 0, 1, 2, 3, 4, 5, 6, 7 removed.
  assert [c['heads_removed'] for c in curve] == list(range(8))
  assert figures['heads_total'] == 8 and figures['start'] == curve[0]['metric']
  k = figures['heads_prunable']
  assert figures['metric_at_point'] >= 0.99 * figures['start']
  assert all(c['metric'] >= 0.99 * figures['start'] for c in curve[:k + 1])
  assert k == 7 or curve[k + 1]['metric'] < 0.99 * figures['start']
  # The physically pruned model scores as the masked one (within one of 32 examples,
  # for argmax ties moved by float rounding).
  assert abs(figures['pruned_metric'] - figures['metric_at_point']) <= 100 / 32 + 1e-6
  assert sum(figures['heads_per_layer']) == 8 - k
  assert figures['sequences_per_s_full'] > 0 and figures['sequences_per_s_pruned'] > 0
  assert figures['params_pruned'] == figures['params_full'] - k * 1048
  assert (out / 'sixteen_heads.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # The pruned model is written as a run, even when a layer kept no heads.
  run = saved_runs.load_run(figures['run'])
  assert sum(run.model.encoder.heads(i) for i in range(2)) == 8 - k
