"""BERT masking statistics, special tokens, whole words and per-epoch determinism."""
from __future__ import annotations

import numpy as np
import pytest

from research.data.batching import BatchIterator
from research.data.encoded import IGNORE_INDEX
from research.data.masking import (MaskedBatches, example_rng, mask_features, mask_tokens,
                                   word_starts_from_tokens, word_starts_from_word_ids)

MASK, VOCAB = 4, 1000


def _sequences(n=40, length=128, seed=0):
  """Rows of [CLS]=1 ... [SEP]=2 with padding (0) at the end; ids >= 10 are words."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    real = int(rng.integers(length // 2, length - 1))
    ids = np.zeros(length, np.int32)
    ids[0], ids[1:real - 1], ids[real - 1] = 1, rng.integers(10, VOCAB, real - 2), 2
    special = np.ones(length, bool)
    special[1:real - 1] = False
    rows.append((ids, special))
  return rows


def test_rate_and_80_10_10_split():
  picked = maskable = masked = randomised = unchanged = 0
  for i, (ids, special) in enumerate(_sequences(300)):
    out, labels = mask_tokens(ids, special, example_rng(0, 0, i), mask_id=MASK,
                              vocab_size=VOCAB)
    sel = labels != IGNORE_INDEX
    assert np.array_equal(labels[sel], ids[sel])
    assert np.array_equal(out[~sel], ids[~sel])  # nothing else changes
    assert not (sel & special).any()  # specials and padding never predicted
    picked += sel.sum()
    maskable += (~special).sum()
    masked += (out[sel] == MASK).sum()
    unchanged += (out[sel] == ids[sel]).sum()
    randomised += ((out[sel] != MASK) & (out[sel] != ids[sel])).sum()
  assert picked > 3000
  assert abs(picked / maskable - 0.15) < 0.01
  # Tolerance 2 % absolute on each share (~4000 picks: std ~0.5 % for the 10 % shares).
  assert abs(masked / picked - 0.8) < 0.02
  assert abs(unchanged / picked - 0.1) < 0.02 + 1 / VOCAB
  assert abs(randomised / picked - 0.1) < 0.02


def test_whole_word_masking_keeps_words_together():
  rng = np.random.default_rng(1)
  total = picked = 0
  for i, (ids, special) in enumerate(_sequences(30)):
    starts = rng.random(len(ids)) < 0.6  # words of 1-4 sub-tokens
    starts[special] = True
    out, labels = mask_tokens(ids, special, example_rng(3, 0, i), mask_id=MASK,
                              vocab_size=VOCAB, word_starts=starts)
    sel = labels != IGNORE_INDEX
    assert not (sel & special).any()
    word = np.cumsum(starts)
    for w in np.unique(word[sel]):  # a word is predicted in full or not at all
      assert sel[(word == w) & ~special].all()
    picked += sel.sum()
    total += (~special).sum()
  assert abs(picked / total - 0.15) < 0.01


def test_word_starts_from_tokenizer_outputs():
  assert word_starts_from_tokens(['[CLS]', 'un', '##believ', '##able', 'day']).tolist() == [
      True, True, False, False, True]
  assert word_starts_from_word_ids([None, 0, 0, 1, None]).tolist() == [
      True, True, False, True, True]


def test_bad_rate_and_shapes_raise():
  ids, special = _sequences(1)[0]
  for rate in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError, match='rate'):
      mask_tokens(ids, special, example_rng(0, 0, 0), mask_id=MASK, vocab_size=VOCAB,
                  rate=rate)
  with pytest.raises(ValueError, match='1-D'):
    mask_tokens(ids, special[:5], example_rng(0, 0, 0), mask_id=MASK, vocab_size=VOCAB)


def _features(n=24):
  rows = [ids[~special | (np.arange(len(ids)) == 0)][:30] for ids, special in _sequences(n, 64)]
  return [{'input_ids': ids, 'special_tokens_mask': np.r_[1, np.zeros(len(ids) - 1, np.int32)]}
          for ids in rows]


def _iterator(features):
  return MaskedBatches(BatchIterator(features, 8, max_length=64, shuffle=True, seed=5,
                                     num_epochs=None, drop_remainder=True),
                       mask_id=MASK, vocab_size=VOCAB, seed=5)


def test_masks_change_per_epoch_and_resume_identically():
  features = _features()
  it = _iterator(features)
  batches = [next(it) for _ in range(7)]  # 3 batches per epoch: epochs 0, 1, 2
  for b in batches:
    assert (b['labels'][b['attention_mask'] == 0] == IGNORE_INDEX).all()
    assert (b['labels'][:, 0] == IGNORE_INDEX).all()  # [CLS] never masked
    assert 'special_tokens_mask' not in b
  by_index = lambda b: {int(i): row for i, row in zip(b['index'], b['labels'])}
  epoch0 = {k: v for b in batches[:3] for k, v in by_index(b).items()}
  epoch1 = {k: v for b in batches[3:6] for k, v in by_index(b).items()}
  assert any(not np.array_equal(epoch0[k], epoch1[k]) for k in epoch0)  # dynamic masking
  resumed = _iterator(features)
  fresh = _iterator(features)
  for _ in range(4):
    next(fresh)
  resumed.load_state_dict(fresh.state_dict())
  for expected in batches[4:]:
    got = next(resumed)
    for key in ('input_ids', 'labels', 'index'):
      assert np.array_equal(got[key], expected[key])


def test_dev_masks_are_fixed():
  features = _features(4)
  a = mask_features(features, 0, mask_id=MASK, vocab_size=VOCAB)
  b = mask_features(features, 0, mask_id=MASK, vocab_size=VOCAB)
  for x, y in zip(a, b):
    assert np.array_equal(x['input_ids'], y['input_ids'])
    assert (x['labels'] != IGNORE_INDEX).sum() >= 1
    assert 'special_tokens_mask' not in x


def test_batches_mask_whole_words_from_the_features():
  features = []
  for ids, special in _sequences(16, 48, seed=2):
    n = int((~special).sum()) + 2
    starts = np.r_[1, np.random.default_rng(n).random(n - 2) < 0.5, 1].astype(np.int8)
    features.append({'input_ids': ids[:n], 'special_tokens_mask': special[:n].astype(np.int8),
                     'word_starts': starts})
  it = MaskedBatches(BatchIterator(features, 8, max_length=48, num_epochs=None), mask_id=MASK,
                     vocab_size=VOCAB, whole_word=True)
  batch = next(it)
  assert 'word_starts' not in batch
  for row, index in enumerate(batch['index']):
    f = features[index]
    n = len(f['input_ids'])
    sel = batch['labels'][row, :n] != IGNORE_INDEX
    inner = f['special_tokens_mask'] == 0
    word = np.cumsum(f['word_starts'])
    for w in np.unique(word[sel]):
      assert sel[(word == w) & inner].all()
  with pytest.raises(ValueError, match='word_starts'):
    next(MaskedBatches(BatchIterator([{'input_ids': np.arange(5)}], 1, max_length=8),
                       mask_id=MASK, vocab_size=VOCAB, whole_word=True))
