"""Latency / throughput measurement and FLOP counts for the encoder.

Timings here are for benchmark scripts and the main job's report, never for tests:
shared machines are noisy. `time_fn` reports the median of several repeats after
warm-up (compilation) so one slow repeat does not skew the figure.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.models import projections
from research.models.config import EncoderConfig


def _projection_macs(config: EncoderConfig, site: str, fan_in: int, fan_out: int) -> int:
  """Multiply-adds per token of one projection, as its kind stores it (dense or low rank)."""
  kind = projections.kind_at(config.projections, site)
  if kind.startswith('low_rank:'):
    return int(kind.split(':', 1)[1]) * (fan_in + fan_out)
  return fan_in * fan_out


def encoder_flops(config: EncoderConfig, batch: int, length: int) -> float:
  """Floating-point operations (2 per multiply-add) of one encoder forward pass.

  Counts the matmuls (Q/K/V/output projections as their kinds store them, attention
  scores and context, FFN), which dominate; embeddings, LayerNorm, softmax and the
  pooler are left out.
  """
  tokens = batch * length
  hidden = config.hidden_size
  total = 0.0
  for i in range(config.num_layers):
    a, f = f'layer_{config.attention_set(i)}', f'layer_{config.ffn_set(i)}'
    inner = config.heads(i) * config.head_dim
    macs = sum(_projection_macs(config, f'{a}/attention/{name}', hidden, inner)
               for name in ('query', 'key', 'value', 'out'))
    macs += _projection_macs(config, f'{f}/mlp/intermediate', hidden, config.ffn(i))
    macs += _projection_macs(config, f'{f}/mlp/output', config.ffn(i), hidden)
    total += 2 * tokens * macs
    total += 2 * 2 * batch * config.heads(i) * length * length * config.head_dim
  if config.embed_size != config.hidden_size:
    total += 2 * tokens * config.embed_size * config.hidden_size
  return total


def time_fn(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10,
            min_seconds: float = 0.0) -> float:
  """Median wall-clock seconds of one call of `fn` (which must block until done)."""
  for _ in range(warmup):
    fn()
  times = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
  """Measured dense float32 matmul rate of this machine through XLA, in GFLOP/s."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  seconds = time_fn(lambda: f(a).block_until_ready(), repeats=repeats)
  return 2 * size ** 3 / seconds / 1e9
