"""Sentence embeddings from a pre-trained encoder: tokenize, encode, mean-pool, normalise.

    encoder = SentenceEncoder.load('minilm-l6')
    vectors = encoder.encode(['A cat sat.', 'A dog ran.'])   # [2, 384], unit norm

This is the sentence-transformers recipe for all-MiniLM-L6-v2 (mean pooling over real
tokens, then L2 normalisation). Batches are padded to a multiple of `pad_to` so the
jitted function is compiled for a few shapes only.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.models.config import EncoderConfig
from research.models.encoder import Encoder, mean_pool


@dataclasses.dataclass
class SentenceEncoder:
  """A loaded encoder with its tokenizer, producing normalised sentence vectors."""
  config: EncoderConfig
  params: Any
  tokenizer: Any
  max_length: int = 256
  pad_to: int = 16

  def __post_init__(self):
    if self.max_length > self.config.max_length:
      raise ValueError(f'max_length={self.max_length} exceeds the position table '
                       f'({self.config.max_length})')
    self.params = jax.device_put(self.params)
    config = self.config

    @jax.jit
    def embed(params, ids, mask, types):
      hidden, _ = Encoder(config).apply({'params': params}, ids, mask, types)
      pooled = mean_pool(hidden.astype(jnp.float32), mask)
      return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True).clip(1e-12)

    self._embed = embed

  @classmethod
  def load(cls, name: str = 'minilm-l6', **kwargs) -> 'SentenceEncoder':
    """Loads checkpoint `name` (see checkpoints.resolve) and its tokenizer."""
    from research.checkpoints import load_pretrained, load_tokenizer  # pylint: disable=g-import-not-at-top
    config, params = load_pretrained(name)
    return cls(config, params, load_tokenizer(name), **kwargs)

  def tokenize(self, sentences: Sequence[str]) -> dict[str, np.ndarray]:
    """Token ids padded to a multiple of `pad_to`; over-long sentences are truncated.

    Raises:
      ValueError: for an empty list, a non-string or an empty / blank sentence.
    """
    if isinstance(sentences, str):
      raise TypeError('encode() takes a list of sentences, not a single string')
    if not sentences:
      raise ValueError('No sentences to encode')
    for i, s in enumerate(sentences):
      if not isinstance(s, str):
        raise TypeError(f'Sentence {i} is {type(s).__name__}, not str')
      if not s.strip():
        raise ValueError(f'Sentence {i} is empty; remove it or give it text')
    full = self.tokenizer(list(sentences), truncation=False)['input_ids']
    too_long = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
    if too_long:
      logging.warning('Truncated %d sentence(s) to max_length=%d tokens: indices %s',
                      len(too_long), self.max_length, too_long[:10])
    batch = self.tokenizer(list(sentences), truncation=True, max_length=self.max_length,
                           padding=True, return_tensors='np')
    length = batch['input_ids'].shape[1]
    padded = min(-(-length // self.pad_to) * self.pad_to, self.max_length)
    out = {}
    for key in ('input_ids', 'attention_mask', 'token_type_ids'):
      value = batch.get(key, np.zeros_like(batch['input_ids']))
      out[key] = np.pad(value, ((0, 0), (0, padded - length))).astype(np.int32)
    out['truncated'] = np.array(too_long, dtype=np.int64)
    return out

  def encode(self, sentences: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Unit-norm embeddings, float32 [len(sentences), hidden]."""
    if batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    chunks = []
    for start in range(0, len(sentences), batch_size):
      batch = self.tokenize(sentences[start:start + batch_size])
      chunks.append(np.asarray(self._embed(self.params, batch['input_ids'],
                                           batch['attention_mask'],
                                           batch['token_type_ids'])))
    if not chunks:
      raise ValueError('No sentences to encode')
    return np.concatenate(chunks)
