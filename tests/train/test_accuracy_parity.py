"""benchmarks/accuracy_parity.py runs both sides on the same features and recipe (a smoke
run on a tiny model and synthetic data; the real comparison is a benchmark, not a test)."""
from __future__ import annotations

import argparse
import json
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


def test_paired_difference_of_known_seeds(parity):
  # MRPC F1, 3 epochs, five seeds each side (docs/results.md).
  ours = {0: 86.11, 1: 86.00, 2: 85.28, 3: 85.67, 4: 85.81}
  torch = {0: 87.80, 1: 86.25, 2: 85.76, 3: 85.67, 4: 85.86, 9: 90.0}  # seed 9 unpaired
  paired = parity.paired_difference(ours, torch)
  assert paired['seeds'] == [0, 1, 2, 3, 4]
  assert paired['mean'] == pytest.approx(-0.494, abs=1e-3)
  assert paired['se'] == pytest.approx(0.3107, abs=1e-3)
  assert paired['t'] == pytest.approx(-1.590, abs=1e-2)
  assert 0.15 < paired['p_two_sided'] < 0.25
  assert parity.paired_difference({0: 1.0}, {0: 2.0}) is None  # one paired seed: no test
  same = parity.paired_difference({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})
  assert same['sd'] == 0 and same['t'] == float('inf') and same['p_two_sided'] == 0.0


def _line(seeds, ours=None, torch=None, overrides=(), **changes):
  line = {'task': 'mrpc', 'metric': 'f1', 'model': 'minilm-l6', 'epochs': 3,
          'train_examples': 0, 'seeds': seeds, 'ours_overrides': list(overrides)}
  if ours is not None:
    line['ours'], line['ours_minutes'] = ours, [1.0] * len(ours)
  if torch is not None:
    line['torch'], line['torch_minutes'] = torch, [2.0] * len(torch)
  return {**line, **changes}


def test_combine_merges_seeds_run_at_different_times(parity):
  merged, by_side = parity.combine([_line([0, 1], [86.0, 85.0], [87.0, 86.0]),
                                    _line([3], torch=[85.5]),
                                    _line([3], ours=[85.0])])
  assert merged['seeds'] == [0, 1, 3]
  assert merged['ours'] == [86.0, 85.0, 85.0] and merged['torch'] == [87.0, 86.0, 85.5]
  assert by_side['ours'] == {0: 86.0, 1: 85.0, 3: 85.0}
  # A combined line combines again; a side that did not run a seed holds None there.
  again, _ = parity.combine([merged, _line([4], ours=[84.0])])
  assert again['ours'] == [86.0, 85.0, 85.0, 84.0] and again['torch'] == [87.0, 86.0, 85.5, None]
  summary = parity.summarize(dict(merged), by_side['ours'], by_side['torch'])
  assert summary['diff'] == pytest.approx(85.333333 - 86.166667, abs=1e-5)
  assert summary['paired']['seeds'] == [0, 1, 3]


@pytest.mark.parametrize('lines, match', [
    ([], 'at least one'),
    ([_line([0], [86.0]), _line([1], [85.0], task='sst2')], 'task=.*not the same comparison'),
    ([_line([0], [86.0]), _line([1], [85.0], epochs=1)], 'epochs=1'),
    ([_line([0], [86.0]), _line([1], [85.0], overrides=['pooling=pooler'])],
     'not the same config of ours'),
    ([_line([0], [86.0]), _line([0], [85.0])], 'seed 0 of ours appears twice'),
])
def test_combine_refuses_lines_of_different_comparisons(parity, lines, match):
  with pytest.raises(ValueError, match=match):
    parity.combine(lines)


def test_combine_command_line(parity, tmp_path, capsys, monkeypatch):
  paths = []
  for i, line in enumerate([_line([0, 1], [86.0, 85.0], [87.0, 86.5]), _line([2], [85.5], [85.0])]):
    paths.append(tmp_path / f'{i}.json')
    paths[-1].write_text('progress lines first\n' + json.dumps(line) + '\n')
  monkeypatch.setattr('sys.argv', ['accuracy_parity.py', '--combine', ','.join(map(str, paths))])
  parity.main()
  out = capsys.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  assert result['seeds'] == [0, 1, 2] and result['ours'] == [86.0, 85.0, 85.5]
  assert result['paired']['mean'] == pytest.approx((-1.0 - 1.5 + 0.5) / 3)
  assert 'paired over seeds [0, 1, 2]' in out
