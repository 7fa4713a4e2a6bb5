r"""One product and one attention, ours beside PyTorch's: where the encoder's gaps come from.

    python benchmarks/cpu_kernels.py
    python benchmarks/cpu_kernels.py --dots 4096x384x1536 --attention 8x12x512x32

The minimal reproductions behind `benchmarks/inference_cpu.py`'s ratios, in one process
with alternated rounds (`research/evaluate/speed.step_medians`), same thread count:
- a projection's product [tokens, in] x [in, out]: ours float32, bf16 (f32 accumulation,
  `mixed_matmul`), int8 as jax writes it (s8 x s8 -> s32, `jnp.einsum`) and as the
  encoder runs it (u8 x s8, `research/models/integer_dot.py`); PyTorch float32 matmul,
  bf16 matmul and dynamic int8 `nn.Linear` (fbgemm: activations quantized per call).
  The int8 cells include quantizing the float input, as both encoders do per call.
- attention (scores, scale, mask, softmax, context) of [batch, heads, length, head_dim]:
  ours as one chain (`RESEARCH_ATTENTION_BLOCKS=off`), ours in cache-sized blocks
  (`research/models/blocked_attention.py`), PyTorch `scaled_dot_product_attention` in
  float32 and under bf16 autocast.
Prints GOP/s (products) or ms (attention) and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

THREADS = int(os.environ.get('BENCH_THREADS', '2'))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from research import specs  # pylint: disable=wrong-import-position
from research.evaluate.speed import cpu_flags, step_medians  # pylint: disable=wrong-import-position
from research.models import blocked_attention, integer_dot, mixed_matmul  # pylint: disable=wrong-import-position


def _quantize(x, scale):
  return jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8)


def dot_calls(torch, tokens: int, n_in: int, n_out: int) -> dict:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((tokens, n_in)).astype(np.float32)
  w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
  wq = np.clip(np.round(w / (np.abs(w).max(0) / 127)), -127, 127).astype(np.int8)
  scale = np.float32(np.abs(x).max() / 127)
  xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  fns = {
      'ours_float32': (jax.jit(lambda a, b: a @ b), (x, w)),
      'ours_bfloat16': (jax.jit(lambda a, b: mixed_matmul.einsum(
          'ti,io->to', a, b, out_dtype=jnp.float32)), (xb, wb)),
      'ours_int8_s8s8': (jax.jit(lambda a, b: jnp.einsum(
          'ti,io->to', _quantize(a, scale), b, preferred_element_type=jnp.int32)), (x, wq)),
      'ours_int8_u8s8': (jax.jit(lambda a, b: integer_dot.s8_einsum(
          'ti,io->to', _quantize(a, scale), b)), (x, wq)),
  }
  calls = {k: (lambda f=f, a=a: jax.block_until_ready(f(*a))) for k, (f, a) in fns.items()}
  tx, tw = torch.from_numpy(x), torch.from_numpy(w)
  linear = torch.nn.Linear(n_in, n_out, bias=False)
  linear.weight.data = tw.T.contiguous()
  qlinear = torch.ao.quantization.quantize_dynamic(
      torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
  txb, twb = tx.bfloat16(), tw.bfloat16()

  def run(fn):
    def call():
      with torch.inference_mode():
        return fn()
    return call
  calls['torch_float32'] = run(lambda: tx @ tw)
  calls['torch_bfloat16'] = run(lambda: txb @ twb)
  calls['torch_int8_dynamic'] = run(lambda: qlinear(tx))
  return calls


def attention_calls(torch, batch: int, heads: int, length: int, head_dim: int) -> dict:
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((batch, heads, length, head_dim)).astype(np.float32)
             for _ in range(3))
  mask = np.ones((batch, length), bool)
  mask[:, length - length // 4:] = False  # a quarter padding
  bias = np.where(mask[:, None, None, :], 0.0, np.finfo(np.float32).min).astype(np.float32)
  scale = head_dim ** -0.5

  def chain(q, k, v, bias):
    s = jnp.einsum('bhqd,bhkd->bhqk', q, k) * scale + bias
    return jnp.einsum('bhqk,bhkd->bhqd', jax.nn.softmax(s, axis=-1), v)
  blocked = jax.jit(lambda q, k, v, b: blocked_attention.attend(
      q, k, v, b, scale=scale, dtype=jnp.float32))
  whole = jax.jit(chain)
  calls = {'ours_chain': lambda: jax.block_until_ready(whole(q, k, v, bias)),
           'ours_blocked': lambda: jax.block_until_ready(blocked(q, k, v, bias))}
  tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
  tb = torch.from_numpy(bias)

  def sdpa(bf16):
    def call():
      with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled=bf16):
        return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tb)
    return call
  calls['torch_sdpa_float32'] = sdpa(False)
  calls['torch_sdpa_bf16'] = sdpa(True)
  return calls


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--dots', default='128x384x1152,4096x384x1536',
                 help='TOKENSxINxOUT products (1x128 Q/K/V; 32x128 FFN)')
  p.add_argument('--attention', default='32x12x128x32,8x12x512x32',
                 help='BATCHxHEADSxLENGTHxHEAD_DIM attentions')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--repeats', type=int, default=10)
  args = p.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(THREADS)
  print(f'threads={THREADS} cpu_flags={",".join(cpu_flags())} jax={jax.__version__} '
        f'torch={torch.__version__}')
  result = {'cpu_flags': cpu_flags(), 'dots_gops': {}, 'attention_ms': {}}
  for shape in specs.items(args.dots, what='--dots'):
    t, i, o = (int(x) for x in shape.split('x'))
    seconds = step_medians(dot_calls(torch, t, i, o), warmup=2, rounds=args.rounds,
                           per_round=args.repeats)
    gops = {k: 2 * t * i * o / min(v) / 1e9 for k, v in seconds.items()}
    result['dots_gops'][shape] = {k: round(v, 1) for k, v in gops.items()}
    print(f'product {shape} (GOP/s): ' + ', '.join(f'{k} {v:.0f}' for k, v in gops.items()))
  for shape in specs.items(args.attention, what='--attention'):
    b, h, s, d = (int(x) for x in shape.split('x'))
    seconds = step_medians(attention_calls(torch, b, h, s, d), warmup=2,
                           rounds=args.rounds, per_round=max(1, args.repeats // 2))
    ms = {k: min(v) * 1e3 for k, v in seconds.items()}
    result['attention_ms'][shape] = {k: round(v, 2) for k, v in ms.items()}
    print(f'attention {shape} (ms): ' + ', '.join(f'{k} {v:.2f}' for k, v in ms.items()))
  print(json.dumps(result))


if __name__ == '__main__':
  main()
