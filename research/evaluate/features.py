"""Per-layer pooled features of a frozen encoder, and an on-disk cache of them.

For every hidden state 0..L of the encoder (0 = embedding output, L = top layer) the
tokens of a sentence are pooled into one vector: 'mean' over real tokens (how
sentence-transformers models such as all-MiniLM-L6-v2 were trained) or 'cls' (the
first token). A set of N tokenized features becomes one float32 array [N, L+1, hidden],
which linear probes (`research.train.probes`) then train on without the encoder.

Encoding a large set is the slow part (minutes), so `cached` keeps the arrays in one
.npz file per `cache_path` key. The file is written whole under a temporary name and
renamed, so a killed run never leaves a half file; an unreadable file is a cache miss.

Example:
  >>> fn = make_feature_fn(config, 'mean')
  >>> x = encode(fn, params, features, batch_size=128, max_length=64, pad_multiple=4)
  >>> x.shape  # (len(features), config.num_layers + 1, config.hidden_size)
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import zipfile
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.evaluate import gather
from research.models.encoder import Encoder, mean_pool

POOLINGS = ('mean', 'cls')
FeatureFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def make_feature_fn(config, pooling: str = 'mean') -> FeatureFn:
  """Returns jitted ``fn(params, ids, mask, types) -> [batch, L+1, hidden]`` float32.

  Args:
    config: the encoder's `EncoderConfig`.
    pooling: 'mean' (average of the tokens where mask is 1) or 'cls' (first token).
  Returns:
    The jitted function; ``types`` may be None (all segment 0).
  Raises:
    ValueError: an unknown pooling.
  """
  if pooling not in POOLINGS:
    raise ValueError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
  encoder = Encoder(config)

  @jax.jit
  def fn(params, ids, mask, types):
    _, inter = encoder.apply({'params': params}, ids, mask, types)
    if pooling == 'mean':
      pooled = [mean_pool(h, mask) for h in inter['hidden_states']]
    else:
      pooled = [h[:, 0] for h in inter['hidden_states']]
    return jnp.stack(pooled, axis=1).astype(jnp.float32)
  return fn


def encode(fn: FeatureFn, params: Any, features: Sequence[dict], *, batch_size: int,
           max_length: int, pad_multiple: int, pad_id: int = 0,
           name: str = '') -> np.ndarray:
  """Runs `fn` over all features in length-sorted batches; returns [N, L+1, hidden].

  Args:
    fn: from `make_feature_fn`.
    params: the encoder's params.
    features: tokenized features with 'input_ids' (and optional 'token_type_ids').
    batch_size: rows per batch; the last one is padded, so each padded length
      compiles one shape.
    max_length: the longest feature allowed; caps the padded length.
    pad_multiple: padded lengths are rounded up to a multiple of this (fewer shapes
      to compile against less padding).
    pad_id: the tokenizer's pad token id.
    name: shown in the progress log.
  Returns:
    float32 [len(features), L+1, hidden], row i from features[i].
  """
  def predict(batch):
    return fn(params, batch['input_ids'], batch['attention_mask'],
              batch.get('token_type_ids'))

  out = None
  start, done, next_report = time.perf_counter(), 0, 0.1
  for index, pooled in gather.batch_outputs(predict, features, batch_size,
                                            max_length=max_length,
                                            pad_multiple=pad_multiple, pad_id=pad_id):
    if out is None:
      out = np.zeros((len(features),) + pooled.shape[1:], np.float32)
    out[index] = pooled
    done += len(index)
    if done / len(features) >= next_report or done == len(features):
      logging.info('encoded %s %d/%d (%.0f%%) in %.0f s', name, done, len(features),
                   100 * done / len(features), time.perf_counter() - start)
      next_report += 0.1
  return out


# -- Cache ----------------------------------------------------------------------------

def cache_path(cache_dir: str, *, model: str, task: str, split: str, num_examples: int,
               max_length: int, pooling: str) -> str:
  """The .npz file in `cache_dir` for the features these arguments determine.

  `num_examples` is the number of leading examples taken (0 = the whole split). The
  model name may be a folder or a Hub id: characters other than letters, digits,
  '.', '-' and '_' become '_'.
  """
  key = f'{model}_{task}_{split}_n{num_examples}_len{max_length}_{pooling}'
  return os.path.join(cache_dir, re.sub(r'[^A-Za-z0-9._-]+', '_', key) + '.npz')


def cached(path: str | None, compute: Callable[[], Mapping[str, np.ndarray]],
           keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """The arrays stored at `path`, or ``compute()``'s, which are then stored there.

  Args:
    path: a .npz file (its folder is created), or None / '' for no cache.
    compute: returns a dict of numpy arrays.
    keys: arrays a stored file must hold to count as a hit.
  Returns:
    A dict of numpy arrays.

  A file that cannot be read (truncated, not an .npz, a key missing) is logged as a
  warning and recomputed, then overwritten.
  """
  if not path:
    return dict(compute())
  arrays = _load(path, keys)
  if arrays is None:
    arrays = dict(compute())
    _save(path, arrays)
  return arrays


def _load(path: str, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}  # read now: a bad member raises here
    missing = sorted(set(keys) - set(arrays))
    if missing:
      raise KeyError(f'no {missing} in {sorted(arrays)}')
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning('unreadable feature cache %s (%s: %s); recomputing', path,
                    type(e).__name__, e)
    return None
  logging.info('loaded cached features %s', path)
  return arrays


def _save(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  folder = os.path.dirname(path) or '.'
  os.makedirs(folder, exist_ok=True)
  # Written whole under a unique temporary name, then renamed over `path` (atomic on
  # one file system): readers see the old file or the new one, never a half one.
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + '.',
                             suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  logging.info('cached features in %s', path)
