"""Held-out perplexity of a causal LM and pseudo-perplexity of a masked LM.

These are different measures and must be labelled so wherever they are reported:

* `causal_perplexity`: exp of the mean NLL of each token given the tokens before it
  (tokens 2..n of each chunk; the first has no context), the usual decoder perplexity.
* `pseudo_perplexity` (Salazar et al. 2020, "Masked Language Model Scoring"): each
  token of [CLS] chunk [SEP] is masked in turn and scored given *all* the others, both
  sides; PPPL = exp of the mean of those NLLs. It sees more context per token than a
  left-to-right model can, so a PPPL is not comparable with a perplexity as a number;
  both are comparable across models of their own kind.

Both take a function of (params, ...) rather than a model, so any model (ours, or a
wrapped reference) can be scored, and jit it once per call.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _nll_at(logits: jax.Array, targets: jax.Array) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]


def _summary(nll: float, tokens: float) -> dict[str, float]:
  return {'nll': nll / max(tokens, 1.0), 'tokens': tokens,
          'perplexity': math.exp(nll / tokens) if tokens else float('nan')}


def _chunks(chunks: Sequence[Sequence[int]]) -> np.ndarray:
  lengths = {len(c) for c in chunks}
  if not chunks or len(lengths) != 1 or min(lengths) < 2:
    raise ValueError('give at least one chunk, all of one length >= 2 tokens, got lengths '
                     f'{sorted(lengths)}')
  return np.asarray(chunks, np.int32)


def causal_perplexity(logits_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], params: Any,
                      chunks: Sequence[Sequence[int]], batch_size: int = 32) -> dict[str, float]:
  """{'nll' (mean, nats), 'tokens', 'perplexity'} of next-token prediction.

  Args:
    logits_fn: (params, ids [b, n], mask [b, n]) -> logits [b, n, vocab], causal.
    params: its first argument.
    chunks: token id sequences, all of one length n (no padding needed).
    batch_size: rows per forward pass.
  """
  ids = _chunks(chunks)

  @jax.jit
  def row_nll(params, x):
    logits = logits_fn(params, x, jnp.ones_like(x))
    return _nll_at(logits[:, :-1], x[:, 1:]).sum(1)

  total = 0.0
  for i in range(0, len(ids), batch_size):
    real = min(batch_size, len(ids) - i)
    nll = row_nll(params, jnp.asarray(_pad_rows(ids[i:i + batch_size], batch_size)))
    total += float(np.asarray(nll)[:real].sum())
  return _summary(total, float(ids.shape[0] * (ids.shape[1] - 1)))


def pseudo_perplexity(logits_at: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array],
                      params: Any, chunks: Sequence[Sequence[int]], *, cls_id: int,
                      sep_id: int, mask_id: int, batch_size: int = 64) -> dict[str, float]:
  """{'nll' (mean, nats), 'tokens', 'perplexity'} of masking each token in turn.

  Args:
    logits_at: (params, ids [b, w], mask [b, w], positions [b, 1]) -> logits [b, 1, vocab]
      of a masked LM at the given positions.
    params: its first argument.
    chunks: token id sequences (no special tokens), all of one length n; each is scored
      as [CLS] chunk [SEP], one masked copy per token (n forward rows per chunk).
    cls_id, sep_id, mask_id: the tokenizer's special ids.
    batch_size: rows (masked copies) per forward pass.
  """
  ids = _chunks(chunks)
  rows, n = ids.shape
  wrapped = np.concatenate([np.full((rows, 1), cls_id, np.int32), ids,
                            np.full((rows, 1), sep_id, np.int32)], axis=1)
  # Row r * n + i masks token i of chunk r (at position i + 1, after [CLS]).
  copies = np.repeat(wrapped, n, axis=0)
  positions = np.tile(np.arange(1, n + 1, dtype=np.int32), rows)
  targets = copies[np.arange(len(copies)), positions]
  copies[np.arange(len(copies)), positions] = mask_id

  @jax.jit
  def row_nll(params, x, at, target):
    logits = logits_at(params, x, jnp.ones_like(x), at[:, None])[:, 0]
    return _nll_at(logits, target)

  total = 0.0
  for i in range(0, len(copies), batch_size):
    part = [_pad_rows(a[i:i + batch_size], batch_size) for a in (copies, positions, targets)]
    real = min(batch_size, len(copies) - i)
    total += float(np.asarray(row_nll(params, *map(jnp.asarray, part)))[:real].sum())
  return _summary(total, float(len(copies)))


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """`x` with its last row repeated up to `rows` rows: one shape for every jitted call."""
  return x if len(x) == rows else np.concatenate([x, np.repeat(x[-1:], rows - len(x), 0)])
