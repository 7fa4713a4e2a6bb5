"""benchmarks/pretrain_speed.py: the masked batch, the FLOP count, bad input, and a
one-step smoke run whose two sides (sharing weights) agree on their losses."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from research.data.encoded import IGNORE_INDEX

pytest.importorskip('torch')
pytest.importorskip('transformers')


@pytest.fixture(scope='module')
def bench(load_benchmark):
  return load_benchmark('pretrain_speed')


def test_make_batch_masks_only_ordinary_tokens(bench):
  config = bench.EncoderConfig(**bench.CONFIGS['tiny'])
  batch = bench.make_batch(config, batch=8, length=40, nsp=True)
  cls, sep, mask, _ = bench.special_ids(config.vocab_size)
  ids, labels = batch['input_ids'], batch['labels']
  assert ids.shape == labels.shape == (8, 40)
  assert (ids[:, 0] == cls).all() and (ids[:, 20] == sep).all() and (ids[:, -1] == sep).all()
  types = batch['token_type_ids']
  assert (types[:, 21:] == 1).all() and (types[:, :21] == 0).all()
  picked = labels != IGNORE_INDEX
  assert not picked[:, [0, 20, 39]].any()  # [CLS] and [SEP] are never predicted
  # BERT's budget: round(0.15 * 37 maskable tokens) = 6 per row, most of them [MASK].
  np.testing.assert_array_equal(picked.sum(1), 6)
  assert (ids[picked] == mask).mean() > 0.5
  assert set(np.unique(batch['pair_labels'])) <= {0, 1}
  assert 'index' not in batch and 'special_tokens_mask' not in batch


@pytest.mark.parametrize('nsp', [False, True])
def test_make_batch_from_text(bench, tok, nsp):
  if not os.path.isdir(bench.CORPORA_DIR['tinyshakespeare']):
    pytest.skip('tinyshakespeare is not staged')
  config = bench.EncoderConfig(**bench.CONFIGS['small'])
  batch = bench.make_batch(config, 4, 32, nsp, text='tinyshakespeare', tokenizer=tok)
  ids, mask, labels = batch['input_ids'], batch['attention_mask'], batch['labels']
  assert ids.shape == mask.shape == labels.shape == (4, 32)
  assert (ids[:, 0] == tok.cls_token_id).all()
  picked = labels != IGNORE_INDEX
  assert picked.any(1).all() and not (picked & (mask == 0)).any()  # padding never masked
  if nsp:  # pairs are padded; both segments have token types
    assert (batch['token_type_ids'] == 1).any(1).all() and (ids[mask == 0] == 0).all()
    assert set(np.unique(batch['pair_labels'])) <= {0, 1}
  else:  # packed sequences fill the length
    assert (mask == 1).all()
  with pytest.raises(ValueError, match='embeds only'):  # the tokenizer's ids must fit
    bench.make_batch(bench.EncoderConfig(**bench.CONFIGS['tiny']), 4, 32, nsp,
                     text='tinyshakespeare', tokenizer=tok)


def test_flops_per_token_counts_bert_matmul_params(bench):
  model, params = bench.build_model('', 'tiny', nsp=False, dtype='float32', dropout=0.1)
  c = bench.CONFIGS['tiny']
  v, d, f, layers = c['vocab_size'], c['hidden_size'], c['intermediate_size'], c['num_layers']
  # Word table (tied decoder) + embedding LN, per layer Q/K/V/O + FFN + 2 LNs, MLM head
  # (transform dense + LN + output bias); no pooler without NSP.
  n = (v * d + 2 * d + layers * (4 * (d * d + d) + 2 * d * f + f + d + 4 * d)
       + d * d + d + 2 * d + v)
  expected = 6 * n + 12 * 16 * layers * d  # heads x head_dim = d
  assert bench.flops_per_token(model.encoder, params, 16) == expected
  assert 'pooler' not in params['encoder']


@pytest.mark.parametrize('argv, problem', [
    (['--config', 'tiny', '--steps', '0'], '--steps'),
    (['--config', 'tiny', '--dropout', '1.5'], '--dropout'),
    (['--config', 'tiny', '--length', '500'], '--length'),
])
def test_bad_input_is_a_clear_error(bench, argv, problem):
  with pytest.raises(ValueError, match=problem):
    bench.run(bench.parse_args(argv))


def test_peak_flops_table(bench):
  assert bench.peak_flops('NVIDIA H200', 'bfloat16', 0.0) == 989e12
  assert bench.peak_flops('cpu', 'float32', 0.0) is None
  assert bench.peak_flops('cpu', 'float32', 2.5) == 2.5e12


@pytest.mark.parametrize('nsp,share', [(False, 0.0), (True, 0.0), (False, 0.5)])
def test_smoke_run_json_line_and_matching_losses(bench, capsys, nsp, share):
  # share 0.5: our logits at 12 of 16 positions (the masked ones among them), same loss.
  argv = ['--config', 'tiny', '--steps', '1', '--rounds', '1', '--warmup', '1',
          '--batch', '4', '--length', '16', '--dropout', '0',
          '--predict_share', str(share)] + (['--nsp'] if nsp else [])
  bench.main(argv)
  last = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(last)
  assert {'ours', 'torch', 'ratio', 'loss_first', 'loss_last', 'flops_per_token',
          'per_round_ratios'} <= set(result)
  assert result['nsp'] is nsp and result['model'] == 'tiny'
  assert result['predict_share'] == share
  for side in ('ours', 'torch'):
    assert math.isfinite(result[side]) and result[side] > 0
  assert result['ratio'] == pytest.approx(result['ours'] / result['torch'], rel=1e-9)
  # Same weights, batch and (dropout-free) float32 step: the first losses agree to float
  # rounding (seen: 1e-7 relative), and after two AdamW updates still closely (seen 4e-6).
  first, last_loss = result['loss_first'], result['loss_last']
  assert math.isfinite(first['ours']) and first['ours'] > 1.0
  assert first['ours'] == pytest.approx(first['torch'], rel=1e-4)
  assert last_loss['ours'] == pytest.approx(last_loss['torch'], rel=1e-3)
  assert last_loss['ours'] < first['ours']  # the updates learn something
