"""benchmarks/accuracy_parity.py runs both sides on the same features and recipe (a smoke
run on a tiny model and synthetic data; the real comparison is a benchmark, not a test)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from research.data import tasks



@pytest.fixture(scope='module')
def parity(load_benchmark):
  return load_benchmark('accuracy_parity')


@pytest.mark.parametrize('task, folder', [('sst2', 'glue'), ('conll2003', '')])
def test_both_sides_train_on_the_same_recipe_and_score(parity, tiny_model, synthetic_root,
                                                       task, folder):
  pytest.importorskip('torch')
  args = argparse.Namespace(batch_size=16, max_length=32, epochs=1, train_examples=32,
                            eval_examples=16, lr=1e-3, warmup_ratio=0.1, weight_decay=0.01,
                            data_dir=str(Path(synthetic_root) / folder), ours=['pad_multiple=32'])
  spec = tasks.get_task(task)
  config = parity.shared_recipe(parity.project_config(task, tiny_model), args, seed=0)
  assert config.pad_multiple == 32 and config.optimizer.clip_norm == 1.0
  assert config.total_steps == 0 and config.num_epochs == 1
  ours, _ = parity.run_ours(config, spec)
  theirs, _ = parity.run_torch(config, spec, args)
  assert 0.0 <= ours <= 100.0 and 0.0 <= theirs <= 100.0
