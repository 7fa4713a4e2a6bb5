"""Tests of BatchIterator: padding, order, resume, host sharding, eval padding."""

import numpy as np
import pytest

from research.data.batching import BatchIterator


def make_features(n=50, max_len=40, seed=0, token_labels=False):
  rng = np.random.default_rng(seed)
  features = []
  for i in range(n):
    length = int(rng.integers(3, max_len + 1))
    features.append({
        'input_ids': rng.integers(1, 1000, length).astype(np.int32),
        'token_type_ids': np.zeros(length, np.int32),
        'labels': (rng.integers(0, 9, length).astype(np.int32) if token_labels
                   else i % 3),
        'idx': i, 'example_id': f'e{i}'})
  return features


def batches(iterator, count=None):
  out = []
  for batch in iterator:
    out.append(batch)
    if count is not None and len(out) == count:
      break
  return out


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_padding_to_a_multiple_and_masks():
  features = make_features(token_labels=True)
  for batch in BatchIterator(features, 8, max_length=40, pad_multiple=8,
                             pad_id=0):
    length = batch['input_ids'].shape[1]
    real = batch['index'][batch['weights'] > 0]
    longest = max(len(features[i]['input_ids']) for i in real)
    assert length % 8 == 0 or length == 40
    assert longest <= length < longest + 8 or length == 40
    for row, i in enumerate(batch['index']):
      if i < 0:
        assert not batch['attention_mask'][row].any()
        continue
      n = len(features[i]['input_ids'])
      assert batch['attention_mask'][row].sum() == n
      np.testing.assert_array_equal(batch['input_ids'][row, :n],
                                    features[i]['input_ids'])
      assert not batch['input_ids'][row, n:].any()
      assert np.all(batch['labels'][row, n:] == -100)
    assert 'example_id' not in batch  # Strings stay out of batches.


def test_pad_length_is_capped_at_max_length():
  features = make_features(n=16, max_len=20)
  features[0]['input_ids'] = np.ones(20, np.int32)
  features[0]['token_type_ids'] = np.zeros(20, np.int32)
  batch = next(BatchIterator(features, 16, max_length=20, pad_multiple=16))
  assert batch['input_ids'].shape == (16, 20)
  with pytest.raises(ValueError, match='20 tokens > max_length=19'):
    BatchIterator(features, 4, max_length=19)


def test_order_is_a_function_of_seed_and_epoch():
  features = make_features()
  kwargs = dict(max_length=40, shuffle=True, bucket_batches=3, num_epochs=2)
  run = lambda seed: batches(BatchIterator(features, 8, seed=seed, **kwargs))
  first = run(7)
  assert_same(first, run(7))
  assert not np.array_equal(run(8)[0]['index'], first[0]['index'])
  per_epoch = len(first) // 2
  assert not np.array_equal(first[0]['index'], first[per_epoch]['index'])
  for epoch in range(2):  # Every example exactly once per epoch.
    seen = np.concatenate([b['index'][b['weights'] > 0] for b in
                           first[epoch * per_epoch:(epoch + 1) * per_epoch]])
    assert sorted(seen.tolist()) == list(range(len(features)))


def test_resume_yields_the_remaining_batches():
  features = make_features()
  kwargs = dict(max_length=40, shuffle=True, seed=3, bucket_batches=2,
                drop_remainder=True, num_epochs=None)
  original = BatchIterator(features, 8, **kwargs)
  assert len(original) == 6
  batches(original, 9)  # Past the first epoch boundary.
  state = original.state_dict()
  assert state == {'epoch': 1, 'step': 3, 'seed': 3, 'num_features': 50}
  expected = batches(original, 7)
  resumed = BatchIterator(features, 8, **kwargs)
  resumed.load_state_dict(dict(state))
  assert_same(batches(resumed, 7), expected)
  with pytest.raises(ValueError, match='seed=3 but this iterator has seed=4'):
    BatchIterator(features, 8, **dict(kwargs, seed=4)).load_state_dict(state)


def test_hosts_get_disjoint_slices_of_the_same_global_batch():
  features = make_features(n=37)
  kwargs = dict(max_length=40, shuffle=True, seed=1, pad_multiple=4)
  full = batches(BatchIterator(features, 8, **kwargs))
  hosts = [batches(BatchIterator(features, 8, process_index=i,
                                 process_count=4, **kwargs))
           for i in range(4)]
  for step, global_batch in enumerate(full):
    parts = [host[step] for host in hosts]
    assert all(p['input_ids'].shape == (2, global_batch['input_ids'].shape[1])
               for p in parts)
    indices = np.concatenate([p['index'] for p in parts])
    np.testing.assert_array_equal(indices, global_batch['index'])
    real = indices[indices >= 0]
    assert len(set(real.tolist())) == len(real)
  with pytest.raises(ValueError, match='multiple of process_count=3'):
    BatchIterator(features, 8, max_length=40, process_count=3)


def test_eval_pads_the_last_batch_with_zero_weights():
  features = make_features(n=10)
  all_batches = batches(BatchIterator(features, 4, max_length=40))
  assert len(all_batches) == 3
  last = all_batches[-1]
  np.testing.assert_array_equal(last['weights'], [1, 1, 0, 0])
  np.testing.assert_array_equal(last['index'], [8, 9, -1, -1])
  weights = np.concatenate([b['weights'] for b in all_batches])
  labels = np.concatenate([b['labels'] for b in all_batches])
  assert weights.sum() == 10
  assert np.sum(weights * (labels == 1)) == sum(f['labels'] == 1
                                                for f in features)


def test_drop_remainder_for_training():
  features = make_features(n=10)
  iterator = BatchIterator(features, 4, max_length=40, drop_remainder=True)
  all_batches = batches(iterator)
  assert len(iterator) == len(all_batches) == 2
  assert all(b['weights'].all() for b in all_batches)
  with pytest.raises(ValueError, match='no full batch'):
    BatchIterator(features, 16, max_length=40, drop_remainder=True)


def test_bucketing_groups_similar_lengths():
  features = make_features(n=256, max_len=64)
  spread = lambda b: np.ptp(b['attention_mask'].sum(1))
  kwargs = dict(max_length=64, shuffle=True, seed=0)
  plain = batches(BatchIterator(features, 16, **kwargs))
  bucketed = batches(BatchIterator(features, 16, bucket_batches=16, **kwargs))
  assert np.mean([spread(b) for b in bucketed]) < 0.25 * np.mean(
      [spread(b) for b in plain])
  # The batches themselves are shuffled, not sorted from short to long.
  widths = [b['input_ids'].shape[1] for b in bucketed]
  assert widths != sorted(widths)


def test_float_labels_and_scalar_fields():
  features = make_features(n=6)
  for f in features:
    f['labels'] = float(f['idx']) / 2
  batch = next(BatchIterator(features, 6, max_length=40))
  assert batch['labels'].dtype == np.float32
  np.testing.assert_allclose(batch['labels'], np.arange(6) / 2)
  np.testing.assert_array_equal(batch['idx'], np.arange(6))
