"""Attention in blocks of heads when the score tensor outgrows the CPU's cache.

    if use_blocks(q.shape, k.shape):
      ctx = attend(q, k, v, bias, scale=d ** -0.5, dtype=dtype)

XLA:CPU runs the score product, scale, mask and softmax of a whole batch as one YNNPACK
fusion. While the [batch, heads, queries, keys] float32 scores fit in the last-level
cache this is the fastest form measured; beyond it the fusion streams the scores
through memory and slows 3x: at 8 x 512 (MiniLM, 12 heads of 32; 100 MB of scores)
174 ms per layer against 58 ms for PyTorch's fused CPU attention, while 32 x 128
(25 MB) runs at 8 ms, faster than PyTorch (docs/results.md, "Attention at length").
`attend` computes the same chain for `BLOCK_BYTES` of scores at a time (`lax.map` over
groups of (batch, head) pairs), which keeps each block in cache: 58 ms at 8 x 512.

It applies on the CPU backend to inference-shaped attention: the encoder uses it only
when no dropout acts on the probabilities, no hook or non-default product sits on the
chain (QAT's fake quantization sees whole tensors), no probabilities are returned, no
cache is written and the mask is padding only (a causal mask has a query axis, which
the blocks would copy per head). Set RESEARCH_ATTENTION_BLOCKS=off to never use it, or to a number
of MiB to use it above that many MiB of scores (default: the last-level cache's size,
from /sys, or 32 MiB).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from research.models import mixed_matmul

BLOCK_BYTES = 4 << 20  # scores per block: ~L2-sized on current x86 server cores
_DEFAULT_LLC = 32 << 20


@functools.lru_cache(maxsize=None)
def _last_level_cache() -> int:
  """Bytes of the largest CPU cache Linux reports (index*/size), else 32 MiB."""
  sizes = []
  base = '/sys/devices/system/cpu/cpu0/cache'
  try:
    for entry in os.listdir(base):
      with open(os.path.join(base, entry, 'size')) as f:
        text = f.read().strip().upper()
      scale = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}.get(text[-1:], 1)
      sizes.append(int(text.rstrip('KMG')) * scale)
  except (OSError, ValueError):
    return _DEFAULT_LLC
  return max(sizes) if sizes else _DEFAULT_LLC


def threshold_bytes() -> int | None:
  """Score bytes above which attention runs in blocks; None when switched off."""
  setting = os.environ.get('RESEARCH_ATTENTION_BLOCKS', '').strip().lower()
  if setting in ('off', '0', 'false', 'no'):
    return None
  if setting:
    try:
      return int(float(setting) * (1 << 20))
    except ValueError:
      raise ValueError(f'RESEARCH_ATTENTION_BLOCKS={setting!r}: expected "off" or a number '
                       'of MiB') from None
  return _last_level_cache()


def use_blocks(q_shape, k_shape) -> bool:
  """Whether scores of queries [b, h, q, d] against keys [b, h, k, d] are worth blocking."""
  limit = threshold_bytes()
  if limit is None or jax.default_backend() != 'cpu':
    return False
  b, h, sq, _ = q_shape
  return b * h * sq * k_shape[2] * 4 > limit


def attend(q, k, v, bias, *, scale: float, dtype) -> jax.Array:
  """softmax(q k^T * scale + bias) v for q [b, h, q, d], k and v [b, h, k, d] and an
  additive bias broadcastable to [b, h, q, k]; the context [b, h, q, d] in `dtype`.

  The same products (`mixed_matmul.einsum`: f32 accumulation for bf16 inputs) and float32
  softmax as the unblocked chain, on `BLOCK_BYTES` of scores at a time.
  """
  b, h, sq, d = q.shape
  sk = k.shape[2]
  flat = lambda x: x.reshape(b * h, *x.shape[2:])
  bias = flat(jnp.broadcast_to(bias, (b, h) + bias.shape[2:]))

  def one(args):
    qq, kk, vv, bb = args
    scores = mixed_matmul.einsum('qd,kd->qk', qq, kk, out_dtype=jnp.float32)
    probs = jax.nn.softmax(scores * jnp.float32(scale) + bb, axis=-1).astype(dtype)
    return mixed_matmul.einsum('qk,kd->qd', probs, vv)

  per_block = max(1, BLOCK_BYTES // (sq * sk * 4))
  ctx = jax.lax.map(one, (flat(q), flat(k), flat(v), bias), batch_size=per_block)
  return ctx.reshape(b, h, sq, d).astype(dtype)
