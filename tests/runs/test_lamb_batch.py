"""The LAMB / AdamW batch-size study: square-root rates, equal sequences seen, table, plot."""
from __future__ import annotations

import json
import math

import pytest

from research.runs import lamb_batch
from experiments.configs import lamb_batch as configs
from research.train import trainer
from tests.conftest import SHARED_DATA


def test_runs_see_the_same_sequences_with_sqrt_scaled_rates():
  config = configs.get_config()
  optimizers, batches = lamb_batch.check(config)
  assert optimizers == ['adamw', 'lamb'] and batches == [64, 256, 1024, 4096]
  for batch in batches:
    c = lamb_batch.trainer_config(config, 'lamb', batch)
    trainer.check_config(c)
    assert c.batch_size * c.optimizer.accumulate_steps == batch
    assert c.total_steps * batch == config.examples
    assert math.isclose(c.optimizer.learning_rate, 1e-2 * math.sqrt(batch / 64))
    assert c.scratch == config.scratch and c.optimizer.name == 'lamb'
  full = configs.get_config('size=full')
  assert full.objective == 'mlm+sop' and 'hidden_size=256' in full.scratch
  config.batch_sizes = '64,300'
  with pytest.raises(ValueError, match='300'):
    lamb_batch.check(config)
  config.batch_sizes, config.optimizers = '64', 'adamw,sgd'
  with pytest.raises(ValueError, match="'sgd'"):
    lamb_batch.check(config)


def test_study_runs_and_reuses_finished_runs(tmp_path, minilm_folder):
  text = (SHARED_DATA / 'corpus' / 'tinyshakespeare' / 'input.txt').read_text()
  corpus = tmp_path / 'lines.txt'
  corpus.write_text('\n'.join(text.split('\n')[:300]))
  config = configs.get_config('runlocal')
  config.model, config.corpus = str(minilm_folder), str(corpus)
  config.examples, config.batch_sizes, config.micro_batch = 32, '8,16', 8
  config.max_documents = 0  # the ~300 lines are many short documents
  out = tmp_path / 'study'
  result = lamb_batch.run(config, str(out))
  rows = {(r['optimizer'], r['batch']): r for r in result['rows']}
  assert set(rows) == {('adamw', 8), ('lamb', 8), ('adamw', 16), ('lamb', 16)}
  assert rows[('adamw', 8)]['steps'] == 4 and rows[('lamb', 16)]['steps'] == 2
  assert all(5.0 < r['mlm_loss'] < 12.0 for r in rows.values())  # ~ln(30522) = 10.3
  assert (out / 'loss_vs_batch.png').stat().st_size > 0
  assert '| 16 | 2 |' in (out / 'results.md').read_text()
  # A rerun reads each finished run's row instead of training again.
  row_file = out / 'lamb_b16' / 'row.json'
  saved = json.loads(row_file.read_text())
  row_file.write_text(json.dumps({**saved, 'row': {**saved['row'], 'mlm_loss': 1.5}}))
  again = lamb_batch.run(config, str(out))
  assert [r['mlm_loss'] for r in again['rows'] if r['optimizer'] == 'lamb'][-1] == 1.5
  # Other settings (here the base rate) train again.
  config.lr.lamb = 3e-3
  config.batch_sizes = '16'
  third = lamb_batch.run(config, str(out))
  assert third['rows'][1]['mlm_loss'] != 1.5 and math.isclose(third['rows'][1]['learning_rate'], 3e-3 * math.sqrt(2))
