"""Deterministic, resumable, host-sharded numpy batches of token features.

`BatchIterator` turns a list of unpadded features (from `research.data.tokenize`)
into numpy batches:

  {'input_ids', 'attention_mask', 'token_type_ids', 'labels', ...: [b, T],
   scalar fields (e.g. 'labels' for classification, 'idx'): [b],
   'weights': float32 [b]   1 for a real example, 0 for a padding row,
   'index': int32 [b]       position of the feature in the list, -1 = padding}

* Dynamic padding: T is the longest feature of the *global* batch rounded up to
  `pad_multiple` and capped at `max_length`, so every host gets the same shape.
* Order: a function of (seed, epoch) only. With `shuffle`, examples are permuted
  each epoch; with `bucket_batches` > 0 they are then sorted by length within
  chunks of that many batches, cut into batches, and the batches are shuffled.
* Resume: `state_dict()` is a few ints; `load_state_dict` on a fresh iterator over
  the same features continues with exactly the batches that were left.
* Hosts: the global batch is cut into `process_count` equal, disjoint slices and
  host `process_index` gets its slice; all hosts must use the same seed.
* The last, partial batch is dropped (`drop_remainder`, for training) or padded
  with weight-0 rows (for evaluation: every example is seen exactly once).

Example:
  >>> it = BatchIterator(features, 32, max_length=128, shuffle=True, seed=0,
  ...                    num_epochs=None)
  >>> batch = next(it); state = it.state_dict()   # {'epoch': 0, 'step': 1, ...}
"""

from typing import Iterator, Optional, Sequence

import numpy as np

from research.data.encoded import IGNORE_INDEX

# Sequence fields padded with something other than 0.
_SEQUENCE_PAD = {'labels': IGNORE_INDEX}


def _field_kinds(feature: dict) -> tuple[list[str], list[str]]:
  """Splits a feature's keys into per-token and scalar numeric fields.

  Per-token fields are 1-D arrays as long as 'input_ids'; scalar fields are
  numbers. Anything else (strings, 2-D offsets) stays out of batches and can be
  found through the batch's 'index'.
  """
  if 'input_ids' not in feature:
    raise ValueError(f'features need "input_ids", got keys {sorted(feature)}')
  length = len(feature['input_ids'])
  sequence, scalar = [], []
  for key, value in feature.items():
    array = np.asarray(value)
    if array.dtype.kind not in 'biuf':
      continue
    if array.ndim == 1 and len(array) == length:
      sequence.append(key)
    elif array.ndim == 0:
      scalar.append(key)
  return sequence, scalar


class BatchIterator(Iterator[dict]):
  """Iterates over padded numpy batches; see the module docstring.

  Args:
    features: unpadded features, each with 'input_ids' and the same keys.
    global_batch_size: examples per global batch (all hosts together).
    max_length: the longest allowed feature; also caps the pad length.
    pad_multiple: pad lengths are rounded up to a multiple of this.
    shuffle: permute the examples every epoch.
    seed: seed of the order (same on all hosts).
    bucket_batches: if > 0, sort by length within chunks of this many batches.
    drop_remainder: drop the last partial batch instead of padding it.
    num_epochs: epochs to run, or None to repeat forever.
    process_index: this host's index in [0, process_count).
    process_count: number of hosts sharing each global batch.
    pad_id: the tokenizer's pad token id for 'input_ids'.
  """

  def __init__(self, features: Sequence[dict], global_batch_size: int, *,
               max_length: int, pad_multiple: int = 8, shuffle: bool = False,
               seed: int = 0, bucket_batches: int = 0,
               drop_remainder: bool = False, num_epochs: Optional[int] = 1,
               process_index: int = 0, process_count: int = 1,
               pad_id: int = 0):
    if not features:
      raise ValueError('no features to batch')
    if global_batch_size < 1 or global_batch_size % process_count:
      raise ValueError(f'global_batch_size={global_batch_size} must be a '
                       f'positive multiple of process_count={process_count}')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} not in '
                       f'[0, {process_count})')
    if pad_multiple < 1 or max_length < 1:
      raise ValueError('pad_multiple and max_length must be >= 1')
    self._lengths = np.array([len(f['input_ids']) for f in features])
    if self._lengths.max() > max_length:
      longest = int(np.argmax(self._lengths))
      raise ValueError(f'feature {longest} has {self._lengths[longest]} '
                       f'tokens > max_length={max_length}; truncate first')
    if drop_remainder and len(features) < global_batch_size:
      raise ValueError(f'{len(features)} features make no full batch of '
                       f'{global_batch_size} with drop_remainder=True')
    self._features = features
    self._sequence_fields, self._scalar_fields = _field_kinds(features[0])
    self._batch_size = global_batch_size
    self._max_length, self._pad_multiple = max_length, pad_multiple
    self._shuffle, self._seed = shuffle, seed
    self._bucket_batches = bucket_batches
    self._drop_remainder, self._num_epochs = drop_remainder, num_epochs
    self._process_index, self._process_count = process_index, process_count
    self._pad_id = pad_id
    self._epoch, self._step = 0, 0
    self._plan_epoch, self._plan = None, []

  def __len__(self) -> int:
    """Number of batches in one epoch."""
    full, rest = divmod(len(self._features), self._batch_size)
    return full + (1 if rest and not self._drop_remainder else 0)

  @property
  def epoch(self) -> int:
    """The epoch the next batch comes from."""
    return self._epoch

  def state_dict(self) -> dict[str, int]:
    """Returns the position: {'epoch', 'step', 'seed', 'num_features'}."""
    return {'epoch': self._epoch, 'step': self._step, 'seed': self._seed,
            'num_features': len(self._features)}

  def load_state_dict(self, state: dict) -> None:
    """Restores a position saved by `state_dict` of an identical iterator.

    Raises:
      ValueError: if the seed or the number of features differ.
    """
    for key, mine in (('seed', self._seed),
                      ('num_features', len(self._features))):
      if key in state and int(state[key]) != mine:
        raise ValueError(f'state has {key}={state[key]} but this iterator has '
                         f'{key}={mine}')
    self._epoch, self._step = int(state['epoch']), int(state['step'])

  def _epoch_plan(self, epoch: int) -> list[np.ndarray]:
    """Global batches of feature indices for `epoch` (-1 = padding row)."""
    n, size = len(self._features), self._batch_size
    if self._shuffle:
      order = np.random.default_rng([self._seed, epoch]).permutation(n)
    else:
      order = np.arange(n)
    if self._bucket_batches > 0:
      chunk = self._bucket_batches * size
      order = np.concatenate([
          part[np.argsort(self._lengths[part], kind='stable')]
          for part in np.split(order, range(chunk, n, chunk))])
    full = n // size
    batches = [order[i * size:(i + 1) * size] for i in range(full)]
    if self._bucket_batches > 0 and self._shuffle:
      rng = np.random.default_rng([self._seed, epoch, 1])
      batches = [batches[i] for i in rng.permutation(full)]
    rest = order[full * size:]
    if len(rest) and not self._drop_remainder:
      batches.append(np.concatenate([rest, np.full(size - len(rest), -1)]))
    return batches

  def __next__(self) -> dict:
    while True:
      if self._num_epochs is not None and self._epoch >= self._num_epochs:
        raise StopIteration
      if self._plan_epoch != self._epoch:
        self._plan = self._epoch_plan(self._epoch)
        self._plan_epoch = self._epoch
      if self._step < len(self._plan):
        break
      self._epoch, self._step = self._epoch + 1, 0
    indices = self._plan[self._step]
    self._step += 1
    real = indices[indices >= 0]
    pad_to = -(-int(self._lengths[real].max()) // self._pad_multiple)
    pad_to = min(pad_to * self._pad_multiple, self._max_length)
    per_host = self._batch_size // self._process_count
    start = self._process_index * per_host
    return self._collate(indices[start:start + per_host], pad_to)

  def _collate(self, indices: np.ndarray, pad_to: int) -> dict:
    """Pads the features at `indices` (-1 = empty row) to length `pad_to`."""
    rows = len(indices)
    first = self._features[0]
    batch = {}
    for key in self._sequence_fields:
      pad = self._pad_id if key == 'input_ids' else _SEQUENCE_PAD.get(key, 0)
      dtype = np.float32 if np.asarray(first[key]).dtype.kind == 'f' else (
          np.int32)
      batch[key] = np.full((rows, pad_to), pad, dtype)
    batch['attention_mask'] = np.zeros((rows, pad_to), np.int32)
    for key in self._scalar_fields:
      dtype = np.float32 if np.asarray(first[key]).dtype.kind == 'f' else (
          np.int32)
      batch[key] = np.zeros(rows, dtype)
    for row, index in enumerate(indices):
      if index < 0:
        continue
      feature = self._features[index]
      length = self._lengths[index]
      for key in self._sequence_fields:
        batch[key][row, :length] = feature[key]
      batch['attention_mask'][row, :length] = 1
      for key in self._scalar_fields:
        batch[key][row] = feature[key]
    batch['weights'] = (indices >= 0).astype(np.float32)
    batch['index'] = indices.astype(np.int32)
    return batch
