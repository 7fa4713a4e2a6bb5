"""The tokenized-corpus cache: exact round trip, keys that change with their inputs,
atomic writes, unreadable entries rebuilt, and the pre-training loader using it."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest

from experiments.configs import pretrain
from research.data import corpus, corpus_cache
from research.train import build
from tests.conftest import SHARED_DATA


@pytest.fixture
def text_file(tmp_path):
  lines = (SHARED_DATA / 'corpus' / 'tinyshakespeare' / 'input.txt').read_text().split('\n')
  path = tmp_path / 'corpus' / 'lines.txt'
  path.parent.mkdir()
  path.write_text('\n'.join(lines[:300]))
  return path


def _same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for name in x:
      assert np.asarray(x[name]).dtype == np.asarray(y[name]).dtype, name
      np.testing.assert_array_equal(x[name], y[name])


def test_round_trip_keeps_ragged_arrays_scalars_and_dtypes(tok, text_file, tmp_path):
  pairs = corpus.pair_features(corpus.read_documents(text_file), tok, 48, task='sop', seed=1)
  assert 'pair_labels' in pairs[0] and len({len(f['input_ids']) for f in pairs}) > 1
  corpus_cache.save(tmp_path / 'pairs.npz', pairs)
  _same(corpus_cache.load(tmp_path / 'pairs.npz'), pairs)
  with pytest.raises(ValueError, match='no features'):
    corpus_cache.save(tmp_path / 'none.npz', [])


def test_key_changes_with_files_tokenizer_and_arguments(tok, text_file):
  base = corpus_cache.key([text_file], tok, objective='mlm', max_length=64)
  assert base == corpus_cache.key([text_file], tok, objective='mlm', max_length=64)
  assert base != corpus_cache.key([text_file], tok, objective='mlm', max_length=32)
  assert base != corpus_cache.key([text_file], tok, objective='mlm+sop', max_length=64)
  tok(['A call', 'sets padding'], padding=True, truncation=True, max_length=8)
  assert base == corpus_cache.key([text_file], tok, objective='mlm', max_length=64)
  other = copy.deepcopy(tok)
  other.add_tokens(['zyzzyva'])
  assert base != corpus_cache.key([text_file], other, objective='mlm', max_length=64)
  with open(text_file, 'a') as f:
    f.write('\nOne more line.\n')
  assert base != corpus_cache.key([text_file], tok, objective='mlm', max_length=64)
  with pytest.raises(ValueError, match='fast tokenizer'):
    corpus_cache.tokenizer_fingerprint(object())


def test_cached_builds_once_and_rebuilds_an_unreadable_entry(tmp_path, caplog):
  calls = []

  def build_features():
    calls.append(1)
    return [{'input_ids': np.arange(n, dtype=np.int32), 'pair_labels': np.int32(n % 2)}
            for n in (3, 5, 4)]

  first = corpus_cache.cached(tmp_path, 'k', build_features)
  second = corpus_cache.cached(tmp_path, 'k', build_features)
  assert len(calls) == 1
  _same(first, second)
  assert sorted(os.listdir(tmp_path)) == ['k.npz']  # no temporary file left behind
  (tmp_path / 'k.npz').write_bytes(b'not an npz')
  _same(corpus_cache.cached(tmp_path, 'k', build_features), first)
  assert len(calls) == 2 and 'unreadable' in caplog.text
  _same(corpus_cache.load(tmp_path / 'k.npz'), first)  # rewritten


def test_pretraining_loader_reuses_the_cache_and_can_turn_it_off(tok, text_file, tmp_path):
  config = pretrain.get_config('objective=mlm+nsp,runlocal')
  config.corpus.source = str(text_file)
  config.corpus.max_documents = 0
  config.max_length = 32
  config.corpus.cache_dir = str(tmp_path / 'cache')
  _, train, dev, _, _ = build.load_corpus(config, tok, len(tok), 4)
  entries = os.listdir(tmp_path / 'cache')
  assert len(entries) == 1 and entries[0].endswith('.npz')
  _, train_again, dev_again, _, _ = build.load_corpus(config, tok, len(tok), 4)
  _same(train, train_again)
  _same(dev, dev_again)
  config.corpus.cache_dir = 'off'
  _, train_uncached, _, _, _ = build.load_corpus(config, tok, len(tok), 4)
  _same(train, train_uncached)
  assert os.listdir(tmp_path / 'cache') == entries
