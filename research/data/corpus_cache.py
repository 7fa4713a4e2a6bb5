"""An on-disk cache of a text corpus's tokenized pre-training features.

Tokenizing the Gutenberg corpus takes 8-11 s on 2 cores, paid again by every run of a
sweep (LAMB batch sizes, objective ablations) that reads the same corpus with the same
tokenizer. The features are cached under a key that changes whenever their input does:

    key = corpus_cache.key(files, tokenizer, objective='mlm', max_length=128, ...)
    features = corpus_cache.cached(cache_dir, key, lambda: build_features(...))

The key hashes each file's resolved path, size and modification time, the tokenizer's
serialisation (vocabulary, normaliser, pre-tokeniser; not the call-time padding and
truncation settings) and its special tokens, and every argument that
shapes the features, with a format version. A file is written to a temporary name and
renamed, so a run killed halfway leaves no partial entry; an entry that cannot be read
is rebuilt (with a warning), never trusted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

FORMAT_VERSION = 1
_ENV = 'RESEARCH_CACHE_DIR'


def default_dir() -> str:
  """$RESEARCH_CACHE_DIR/corpus, else ~/.cache/research/corpus."""
  root = os.environ.get(_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'research')
  return os.path.join(root, 'corpus')


def tokenizer_fingerprint(tokenizer) -> str:
  """sha256 of a fast tokenizer's vocabulary and pipeline plus its special tokens."""
  backend = getattr(tokenizer, 'backend_tokenizer', None)
  if backend is None:
    raise ValueError('the corpus cache needs a Hugging Face fast tokenizer, got '
                     f'{type(tokenizer).__name__}')
  # Truncation and padding are call-time settings that transformers writes into the
  # backend on each call; they do not change the tokens of an unpadded, untruncated call.
  state = json.loads(backend.to_str())
  state.pop('truncation', None)
  state.pop('padding', None)
  digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode())
  digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True,
                           default=str).encode())
  return digest.hexdigest()


def key(files: Iterable[str | os.PathLike], tokenizer, **arguments) -> str:
  """Hex key of the features built from `files` by `tokenizer` with `arguments`."""
  parts = {'version': FORMAT_VERSION, 'tokenizer': tokenizer_fingerprint(tokenizer),
           'arguments': arguments, 'files': []}
  for file in files:
    stat = os.stat(file)
    parts['files'].append([str(Path(file).resolve()), stat.st_size, stat.st_mtime_ns])
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def save(path: str | os.PathLike, features: list[dict]) -> None:
  """Writes features (dicts of 1-d arrays and scalars, the same keys each) atomically."""
  if not features:
    raise ValueError('no features to cache')
  names = sorted(features[0])
  arrays = {}
  for name in names:
    values = [np.asarray(f[name]) for f in features]
    if values[0].ndim == 0:
      arrays[f'scalar/{name}'] = np.stack(values)
    else:
      arrays[f'ragged/{name}'] = np.concatenate(values)
      arrays[f'lengths/{name}'] = np.asarray([len(v) for v in values], np.int64)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  with open(temporary, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(temporary, path)


def load(path: str | os.PathLike) -> list[dict]:
  """The features `save` wrote, in order."""
  with np.load(path) as data:
    columns = {}
    for entry in data.files:
      kind, _, name = entry.partition('/')
      if kind == 'scalar':
        columns[name] = list(data[entry])
      elif kind == 'ragged':
        lengths = data[f'lengths/{name}']
        columns[name] = np.split(data[entry], np.cumsum(lengths)[:-1])
      elif kind != 'lengths':
        raise ValueError(f'{path}: unexpected entry {entry!r}')
  counts = {name: len(column) for name, column in columns.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f'{path}: columns of different lengths or none: {counts}')
  return [{name: column[i] for name, column in columns.items()}
          for i in range(next(iter(counts.values())))]


def cached(cache_dir: str | os.PathLike, cache_key: str,
           build: Callable[[], list[dict]]) -> list[dict]:
  """The features under `cache_key` in `cache_dir`, built (and stored) if absent."""
  path = Path(cache_dir) / f'{cache_key}.npz'
  if path.exists():
    try:
      features = load(path)
      logging.info('Corpus features: %d sequences from the cache %s', len(features), path)
      return features
    except Exception as error:  # pylint: disable=broad-except
      logging.warning('Corpus cache entry %s is unreadable (%s); rebuilding it', path, error)
  features = build()
  try:
    save(path, features)
    logging.info('Corpus features: %d sequences cached at %s', len(features), path)
  except OSError as error:  # a read-only or full disk must not stop the run
    logging.warning('Could not write the corpus cache %s: %s', path, error)
  return features
