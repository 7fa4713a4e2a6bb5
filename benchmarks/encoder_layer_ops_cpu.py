"""Per-op timings of one MiniLM-sized encoder layer under XLA:CPU (a profiling aid).

    python benchmarks/encoder_layer_ops_cpu.py
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/encoder_layer_ops_cpu.py

Times each piece of a layer at batch 32 x length 128 (hidden 384, 12 heads of 32, FFN
1536) in isolation, with alternative formulations side by side, to see where the
encoder loses to PyTorch (benchmarks/inference_cpu.py has the side-by-side figures).
Ours-only numbers: use them to compare formulations, not to claim speed-ups.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from research.evaluate.speed import time_fn  # pylint: disable=wrong-import-position

B, S, H, N, D, F = 32, 128, 384, 12, 32, 1536


def main():
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape) * 0.05, jnp.float32)
  x, w_qkv, w_in, w_out = normal(B, S, H), normal(H, 3 * H), normal(H, F), normal(F, H)
  q_bhsd, q_bshd, scores = normal(B, N, S, D), normal(B, S, N, D), normal(B, N, S, S)
  hidden = normal(B, S, F)
  bias = jnp.zeros((B, 1, 1, S))

  def split_heads(y):
    return y.reshape(B, S, 3, N, D).transpose(2, 0, 3, 1, 4)

  gelu_erf = lambda h: h * (0.5 + 0.5 * jax.lax.erf(h * 0.7071067811865476))
  # (name, function, arguments): arrays are passed as arguments, never closed over,
  # so XLA cannot fold the computation into a constant.
  cases = [
      ('qkv matmul', lambda a, w: a @ w, (x, w_qkv)),
      ('qkv matmul + split to [3,b,h,s,d]', lambda a, w: split_heads(a @ w), (x, w_qkv)),
      ('scores bhqd,bhkd->bhqk', lambda q: jnp.einsum('bhqd,bhkd->bhqk', q, q), (q_bhsd,)),
      ('scores bqhd,bkhd->bhqk', lambda q: jnp.einsum('bqhd,bkhd->bhqk', q, q), (q_bshd,)),
      ('softmax', lambda s, m: jax.nn.softmax(s + m, -1), (scores, bias)),
      ('context bhqk,bhkd->bqhd', lambda p, v: jnp.einsum('bhqk,bhkd->bqhd', p, v),
       (scores, q_bhsd)),
      ('context bhqk,bhkd->bhqd', lambda p, v: jnp.einsum('bhqk,bhkd->bhqd', p, v),
       (scores, q_bhsd)),
      ('jax.nn.dot_product_attention',
       lambda q, m: jax.nn.dot_product_attention(q, q, q, bias=m), (q_bshd, bias)),
      ('ffn in matmul', lambda a, w: a @ w, (x, w_in)),
      ('ffn in + gelu (jax.nn.gelu exact)',
       lambda a, w: jax.nn.gelu(a @ w, approximate=False), (x, w_in)),
      ('ffn in + gelu (erf form)', lambda a, w: gelu_erf(a @ w), (x, w_in)),
      ('ffn out matmul', lambda h, w: h @ w, (hidden, w_out)),
  ]
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  for name, fn, args in cases:
    jitted = jax.jit(fn)
    seconds = time_fn(lambda: jax.block_until_ready(jitted(*args)), repeats=10)
    print(f'{name:40s} {seconds * 1e3:8.2f} ms')


if __name__ == '__main__':
  main()
