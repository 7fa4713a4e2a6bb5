"""research/evaluate/speed.py: the batching and the round structure (never a timing)."""
from __future__ import annotations

import numpy as np
import pytest

from research.evaluate import speed


class _Tokenizer:
  """Whitespace tokens as ids 1..n, [CLS]=101 / [SEP]=102; pairs get type ids."""

  def __call__(self, texts, pairs=None, truncation=True, max_length=512):
    ids, types = [], []
    for i, text in enumerate(texts):
      a = [101] + list(range(1, len(text.split()) + 1)) + [102]
      b = [] if pairs is None else list(range(1, len(pairs[i].split()) + 1)) + [102]
      row = (a + b)[:max_length]
      ids.append(row)
      types.append(([0] * len(a) + [1] * len(b))[:max_length])
    return {'input_ids': ids, 'token_type_ids': types}


def test_length_batches_pad_each_batch_to_its_own_longest_row():
  examples = [{'text_a': 'a b'}, {'text_a': 'a b c d e f g h i j'}, {'text_a': 'x'}]
  batches = speed.length_batches(_Tokenizer(), examples, batch=2, max_length=64,
                                 pad_multiple=8)
  assert [b['input_ids'].shape for b in batches] == [(2, 16), (1, 8)]
  np.testing.assert_array_equal(batches[0]['attention_mask'].sum(1), [4, 12])
  static = speed.length_batches(_Tokenizer(), examples, batch=2, max_length=64,
                                dynamic=False)
  assert [b['input_ids'].shape for b in static] == [(2, 64), (1, 64)]


def test_length_batches_carry_pair_segments_and_refuse_empty_input():
  batches = speed.length_batches(_Tokenizer(), [{'text_a': 'a b', 'text_b': 'c'}], batch=4,
                                 max_length=16)
  np.testing.assert_array_equal(batches[0]['token_type_ids'][0, :6], [0, 0, 0, 0, 1, 1])
  with pytest.raises(ValueError, match='examples'):
    speed.length_batches(_Tokenizer(), [], batch=4, max_length=16)


def test_step_medians_alternates_sides_round_by_round():
  calls = []
  steps = {'ours': lambda: calls.append('ours'), 'torch': lambda: calls.append('torch')}
  medians = speed.step_medians(steps, warmup=1, rounds=2, per_round=3)
  assert set(medians) == {'ours', 'torch'}
  assert all(len(v) == 2 and all(t >= 0 for t in v) for v in medians.values())
  # warm-up interleaved, then each round runs one side's 3 steps, then the other's.
  assert calls == ['ours', 'torch'] + (['ours'] * 3 + ['torch'] * 3) * 2


@pytest.mark.parametrize('kwargs', [dict(warmup=0, rounds=0, per_round=1),
                                    dict(warmup=0, rounds=1, per_round=0),
                                    dict(warmup=-1, rounds=1, per_round=1)])
def test_step_medians_rejects_empty_measurements(kwargs):
  with pytest.raises(ValueError, match='rounds'):
    speed.step_medians({'a': lambda: None}, **kwargs)
