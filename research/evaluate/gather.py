"""Run a function once over every feature, in length-sorted batches, in feature order.

Evaluation (`research.train.evaluation`) and feature extraction
(`research.evaluate.features`) share one pattern: a non-shuffled `BatchIterator` whose
`bucket_batches` spans the whole set sorts all features by length, so short rows are
not padded to long ones; its last batch is padded with rows of index -1; outputs go
back to feature order through each batch's 'index'. No feature is dropped or seen
twice.

Example:
  >>> lengths = gather_outputs(lambda b: b['attention_mask'].sum(1), features, 32,
  ...                          max_length=128, pad_multiple=8)
  >>> [int(n) for n in lengths] == [len(f['input_ids']) for f in features]
  True
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from research import distributed
from research.data.batching import BatchIterator

# Batch fields the function does not see: positions for gathering, example ids.
_BOOKKEEPING = ('index', 'idx')


def eval_batches(features: Sequence[dict], batch_size: int, *, max_length: int,
                 pad_multiple: int, pad_id: int = 0) -> Iterator[tuple[np.ndarray, dict]]:
  """Yields ``(index, batch)``: every feature once, in length-sorted batches of
  `batch_size` rows (the last padded with rows of index -1 and weight 0); `batch` holds
  the model's fields, `index` the rows' positions in `features`."""
  # One bucket over the whole set: the non-shuffled order is simply sorted by length.
  iterator = BatchIterator(features, batch_size, max_length=max_length,
                           pad_multiple=pad_multiple, shuffle=False, num_epochs=1,
                           bucket_batches=-(-len(features) // batch_size), pad_id=pad_id)
  for batch in iterator:
    yield batch['index'], {k: v for k, v in batch.items() if k not in _BOOKKEEPING}


def batch_outputs(fn: Callable[[dict], Any], features: Sequence[dict], batch_size: int,
                  *, max_length: int, pad_multiple: int, pad_id: int = 0,
                  put: Callable[[dict], dict] = lambda b: b
                  ) -> Iterator[tuple[np.ndarray, Any]]:
  """Yields ``(index, outputs)`` per batch, padding rows removed.

  Args:
    fn: maps a padded batch (`BatchIterator` fields but 'index' and 'idx') to an
      array with a leading batch axis, or a dict of them.
    features: unpadded features, each with 'input_ids'.
    batch_size: rows per batch (the last batch is padded to it, so one shape per
      padded length is compiled).
    max_length: the longest allowed feature; also caps the padded length.
    pad_multiple: padded lengths are rounded up to a multiple of this.
    pad_id: the tokenizer's pad token id for 'input_ids'.
    put: applied to the batch before `fn` (e.g. placing it on a device mesh).
  Yields:
    ``index``: int [rows] positions in `features` of the batch's real rows;
    ``outputs``: `fn`'s host (numpy) outputs of those rows, in the same order.
  """
  for index, batch in eval_batches(features, batch_size, max_length=max_length,
                                   pad_multiple=pad_multiple, pad_id=pad_id):
    real = index >= 0
    out = fn(put(batch))
    if isinstance(out, dict):  # to_host: on several processes, every process's rows
      out = {k: distributed.to_host(v)[real] for k, v in out.items()}
    else:
      out = distributed.to_host(out)[real]
    yield index[real], out


def gather_outputs(fn: Callable[[dict], Any], features: Sequence[dict], batch_size: int,
                   *, max_length: int, pad_multiple: int, pad_id: int = 0,
                   put: Callable[[dict], dict] = lambda b: b) -> list[Any]:
  """Per-feature host outputs of `fn` (a row, or a dict of rows), in feature order.

  Arguments as in `batch_outputs`.
  """
  outputs: list[Any] = [None] * len(features)
  for index, out in batch_outputs(fn, features, batch_size, max_length=max_length,
                                  pad_multiple=pad_multiple, pad_id=pad_id, put=put):
    for row, feature in enumerate(index):
      outputs[feature] = ({k: v[row] for k, v in out.items()} if isinstance(out, dict)
                          else out[row])
  missing = [i for i, o in enumerate(outputs) if o is None]
  if missing:  # a batching bug would otherwise score a partial set
    raise RuntimeError(f'{len(missing)} of {len(features)} features got no output '
                       f'(first: {missing[:5]})')
  return outputs
