"""The encoder-vs-decoder generation study: same budget, held-out text, end to end."""
from __future__ import annotations

import json

import pytest

from research.runs import encoder_vs_decoder as study
from experiments.configs import encoder_vs_decoder as configs
from research.train import source, trainer
from tests.conftest import SHARED_DATA


def test_the_two_runs_differ_only_in_objective_and_block():
  config = configs.get_config()
  study.check(config)
  encoder, decoder = (study.trainer_config(config, k, '/x/train.txt') for k in study.KINDS)
  for c in (encoder, decoder):
    trainer.check_config(c)
  fields = source.scratch_fields(decoder.scratch)
  assert fields['causal'] is True and fields['norm_position'] == 'pre'
  assert 'causal' not in source.scratch_fields(encoder.scratch)
  a, b = encoder.to_dict(), decoder.to_dict()
  assert (a['corpus'].pop('objective'), b['corpus'].pop('objective')) == ('mlm', 'clm')
  a.pop('scratch'), b.pop('scratch')
  assert a == b


def test_bad_settings_are_named():
  config = configs.get_config()
  config.decoder = 'norm_position=pre'
  with pytest.raises(ValueError, match='causal'):
    study.check(config)
  config = configs.get_config()
  config.max_new_tokens = 100
  with pytest.raises(ValueError, match='max_length'):
    study.check(config)


def test_study_runs_end_to_end(tmp_path, minilm_folder):
  lines = (SHARED_DATA / 'corpus' / 'tinyshakespeare' / 'input.txt').read_text().split('\n')
  corpus = tmp_path / 'plays.txt'
  corpus.write_text('\n'.join(lines[:400]))
  config = configs.get_config('runlocal')
  config.model, config.corpus, config.heldout_share = str(minilm_folder), str(corpus), 0.2
  out = tmp_path / 'study'
  result = study.run(config, str(out))
  train_text = (out / 'corpus' / 'train.txt').read_text()
  assert lines[2] in train_text and lines[390] not in train_text  # the tail is held out
  rows = result['rows']
  assert rows['decoder']['measure'] == 'held-out perplexity'
  assert rows['encoder']['measure'] == 'held-out pseudo-perplexity'
  for row in rows.values():
    assert row['value'] > 1 and row['tokens_per_s'] > 0 and 0 < row['distinct_2'] <= 1
  assert len(result['samples']) == 2 and all(s['decoder'] and s['encoder']
                                             for s in result['samples'])
  assert (out / 'samples.md').is_file() and '| decoder, causal LM' in (
      out / 'results.md').read_text()
  saved = json.loads((out / 'results.json').read_text())
  assert saved['rows']['encoder']['params'] > 0
