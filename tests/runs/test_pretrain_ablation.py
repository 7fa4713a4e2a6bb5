"""The NSP / SOP / MLM ablation driver: same budget per objective, fine-tunes, summary."""
from __future__ import annotations

import json

import pytest

from research.runs import pretrain_ablation
from experiments.configs import pretrain_ablation as configs
from research.testing import write_synthetic_data
from research.train import trainer
from tests.conftest import SHARED_DATA


def test_objectives_share_everything_but_the_objective():
  config = configs.get_config()
  objectives, task_names, seeds = pretrain_ablation.check(config)
  assert objectives == ['mlm', 'mlm+nsp', 'mlm+sop'] and seeds == [0, 1, 2]
  runs = [pretrain_ablation.pretrain_config(config, o) for o in objectives]
  for c in runs:
    trainer.check_config(c)
  dicts = [c.to_dict() for c in runs]
  for d in dicts:
    assert d['corpus'].pop('objective') in objectives
  assert dicts[0] == dicts[1] == dicts[2]
  tune = pretrain_ablation.finetune_config(config, 'runs/x', 'mrpc', 2)
  assert tune.init_from == 'runs/x:best' and tune.seed == 2 and tune.pooling == 'pooler'
  assert configs.get_config('continued').scratch == ''
  config.objectives = 'mlm,electra'
  with pytest.raises(ValueError, match='electra'):
    pretrain_ablation.check(config)


def test_summary_marks_differences_beyond_seed_noise():
  rows = [{'objective': o, 'task': 't', 'score': s} for o, scores in
          (('mlm', [80.0, 81.0, 82.0]), ('mlm+nsp', [84.0, 85.0, 86.0]),
           ('mlm+sop', [80.5, 81.5, 82.5])) for s in scores]
  summary = pretrain_ablation.summarise(rows, ['mlm', 'mlm+nsp', 'mlm+sop'], ['t'])['t']
  assert summary['mlm']['diff'] == 0 and summary['mlm+nsp']['diff'] == pytest.approx(4.0)
  assert summary['mlm+nsp']['beyond_noise'] and not summary['mlm+sop']['beyond_noise']


def test_ablation_runs_end_to_end(tmp_path, minilm_folder):
  text = (SHARED_DATA / 'corpus' / 'tinyshakespeare' / 'input.txt').read_text()
  corpus = tmp_path / 'lines.txt'
  corpus.write_text('\n'.join(text.split('\n')[:300]))
  config = configs.get_config('runlocal')
  config.model, config.corpus, config.max_documents = str(minilm_folder), str(corpus), 0
  config.objectives = 'mlm,mlm+sop'
  config.data_dir = write_synthetic_data(tmp_path / 'data', sst2=64)['glue']
  out = tmp_path / 'ablation'
  result = pretrain_ablation.run(config, str(out))
  assert [r['objective'] for r in result['rows']] == ['mlm', 'mlm+sop']
  assert all(0 <= r['score'] <= 100 for r in result['rows'])
  assert 'sop_accuracy' in result['pretrain']['mlm+sop']
  assert (out / 'mlm_sop' / 'sst2_s0' / 'row.json').is_file()
  table = (out / 'results.md').read_text()
  assert '| mlm+sop |' in table
  saved = json.loads((out / 'results.json').read_text())
  assert set(saved['summary']['sst2']) == {'mlm', 'mlm+sop'}
