"""Tests of research.evaluate.features (and the gather loop it shares with evaluation).

A tiny random encoder; features of different lengths in unsorted order, more of them
than one batch, so batches are length-sorted and the last one has padding rows.
Tolerance: 1e-5 absolute between batched (padded, masked) float32 features and each
example encoded alone and pooled in numpy.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
import pytest

from research.evaluate import features, gather
from research.models import Encoder, EncoderConfig, init_params

CONFIG = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4,
                       intermediate_size=24, max_position_embeddings=32)
MAX_LENGTH = 24


@pytest.fixture(scope='module')
def params():
  return init_params(CONFIG, jax.random.PRNGKey(0))


@pytest.fixture(scope='module')
def examples():
  # Unsorted, 11 = two batches of 8 less 5 padding rows; few distinct lengths keep the
  # per-length compiles of the unbatched reference down.
  lengths = [9, 17, 3, 17, 1, 9, 3, 17, 1, 9, 3]
  rng = np.random.default_rng(0)
  return [{'input_ids': rng.integers(1, 50, n).astype(np.int32),
           'token_type_ids': (np.arange(n) >= n // 2).astype(np.int32),
           'labels': i % 2, 'idx': i} for i, n in enumerate(lengths)]


@pytest.fixture(scope='module')
def reference(params, examples):
  """Each example alone (no padding, no mask, no other rows): its hidden states."""
  encoder = Encoder(CONFIG)
  hidden_states = jax.jit(lambda p, ids, types: encoder.apply({'params': p}, ids,
                                                              None, types)[1]['hidden_states'])
  return [np.stack([np.asarray(h[0]) for h in hidden_states(
      params, f['input_ids'][None], f['token_type_ids'][None])]) for f in examples]


@pytest.fixture(scope='module')
def encoded(params, examples):
  return {pooling: features.encode(features.make_feature_fn(CONFIG, pooling), params,
                                   examples, batch_size=8, max_length=MAX_LENGTH,
                                   pad_multiple=4)
          for pooling in features.POOLINGS}


@pytest.mark.parametrize('pooling', features.POOLINGS)
def test_batched_features_equal_unbatched_in_feature_order(encoded, reference, examples,
                                                           pooling):
  x = encoded[pooling]
  assert x.shape == (len(examples), CONFIG.num_layers + 1, CONFIG.hidden_size)
  assert x.dtype == np.float32
  for i, states in enumerate(reference):  # states: [L+1, length, hidden]
    expected = states.mean(1) if pooling == 'mean' else states[:, 0]
    np.testing.assert_allclose(x[i], expected, atol=1e-5, err_msg=f'example {i}')
  # Distinct inputs give distinct rows: a misplaced row could not pass by accident.
  assert len({x[i, -1].tobytes() for i in range(len(examples))}) == len(examples)


def test_mean_and_cls_pooling_agree_on_one_token_only(encoded, examples):
  lengths = np.array([len(f['input_ids']) for f in examples])
  mean, cls = encoded['mean'], encoded['cls']
  np.testing.assert_allclose(mean[lengths == 1], cls[lengths == 1], atol=1e-5)
  assert not np.allclose(mean[lengths > 1], cls[lengths > 1], atol=1e-3)


def test_unknown_pooling_is_an_error():
  with pytest.raises(ValueError, match="'max'"):
    features.make_feature_fn(CONFIG, 'max')


def test_gather_outputs_follow_feature_order(examples):
  lengths = gather.gather_outputs(lambda b: b['attention_mask'].sum(1), examples, 4,
                                  max_length=MAX_LENGTH, pad_multiple=8)
  assert [int(n) for n in lengths] == [len(f['input_ids']) for f in examples]
  both = gather.gather_outputs(
      lambda b: {'n': b['attention_mask'].sum(1), 'label': b['labels']}, examples, 4,
      max_length=MAX_LENGTH, pad_multiple=8)
  assert [int(o['label']) for o in both] == [f['labels'] for f in examples]


# -- Cache ----------------------------------------------------------------------------

def counting(arrays):
  """A compute function that records how often it ran."""
  def compute():
    compute.calls += 1
    return arrays
  compute.calls = 0
  return compute


def test_cache_hit_returns_identical_arrays_without_computing(tmp_path):
  arrays = {'features': np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32),
            'labels': np.arange(5, dtype=np.int32)}
  path = features.cache_path(str(tmp_path / 'cache'), model='org/model', task='sst2',
                             split='train', num_examples=5, max_length=64, pooling='mean')
  # A Hub id's '/' does not make a subfolder.
  assert os.path.dirname(path) == str(tmp_path / 'cache')
  first = counting(arrays)
  features.cached(path, first, keys=('features', 'labels'))
  assert first.calls == 1
  again = counting(arrays)
  loaded = features.cached(path, again, keys=('features', 'labels'))
  assert again.calls == 0
  for key, value in arrays.items():
    assert loaded[key].dtype == value.dtype
    np.testing.assert_array_equal(loaded[key], value)
  assert [str(p) for p in (tmp_path / 'cache').iterdir()] == [path]  # no temporary left


def test_cache_key_separates_what_determines_the_features(tmp_path):
  base = dict(model='minilm-l6', task='sst2', split='train', num_examples=0,
              max_length=64, pooling='mean')
  changed = [dict(base, **{k: v}) for k, v in (
      ('model', 'bert-base'), ('task', 'cola'), ('split', 'validation'),
      ('num_examples', 256), ('max_length', 32), ('pooling', 'cls'))]
  paths = {features.cache_path(str(tmp_path), **kw) for kw in [base] + changed}
  assert len(paths) == 1 + len(changed)


@pytest.mark.parametrize('content', [b'not an npz file', b'PK\x03\x04 truncated zip'])
def test_corrupt_cache_is_recomputed_and_rewritten(tmp_path, caplog, content):
  path = str(tmp_path / 'features.npz')
  with open(path, 'wb') as f:
    f.write(content)
  arrays = {'features': np.ones((2, 3), np.float32), 'labels': np.array([0, 1])}
  compute = counting(arrays)
  with caplog.at_level(logging.WARNING):
    out = features.cached(path, compute, keys=('features', 'labels'))
  assert compute.calls == 1
  np.testing.assert_array_equal(out['features'], arrays['features'])
  assert any('unreadable feature cache' in r.getMessage() and r.levelno == logging.WARNING
             for r in caplog.records)
  # The file was replaced by a readable one: the next call is a hit.
  hit = counting(arrays)
  np.testing.assert_array_equal(features.cached(path, hit)['labels'], arrays['labels'])
  assert hit.calls == 0


def test_cache_missing_a_key_is_a_miss(tmp_path):
  path = str(tmp_path / 'features.npz')
  np.savez(path, features=np.zeros(3))
  compute = counting({'features': np.ones(3), 'labels': np.ones(3)})
  out = features.cached(path, compute, keys=('features', 'labels'))
  assert compute.calls == 1 and set(out) == {'features', 'labels'}


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
  path = tmp_path / 'features.npz'

  def broken_savez(f, **arrays):
    f.write(b'PK\x03\x04 half')  # a partial archive, then the process "dies"
    raise KeyboardInterrupt

  monkeypatch.setattr(np, 'savez', broken_savez)
  with pytest.raises(KeyboardInterrupt):
    features.cached(str(path), lambda: {'features': np.ones(3)})
  assert list(tmp_path.iterdir()) == []
