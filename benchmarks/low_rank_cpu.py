r"""Low-rank factorization on CPU: parameters, FLOPs, inference speed and closeness to dense.

    python benchmarks/low_rank_cpu.py                          # MiniLM-L6, FFN ranks 64/128
    python benchmarks/low_rank_cpu.py --ranks 32,96 --sites 'layer_\d+/.*' --shapes 32x64

The bundled MiniLM's projections (FFN only by default) are factorized by truncated SVD
(`research/transforms/low_rank.py`) at each rank; each model and the dense one encode
the same random token ids, alternating rounds so drifting load hits all alike. Printed
per model: encoder parameters, forward GFLOPs, sequences/s, speed-up over dense, and
the mean cosine between its and the dense model's last hidden states (before any
recovery fine-tune; that fine-tune is `experiments/transform.py` + `init_from`). The
last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from research import specs  # pylint: disable=wrong-import-position
from research.checkpoints import load_pretrained  # pylint: disable=wrong-import-position
from research.evaluate.speed import encoder_flops, time_fn  # pylint: disable=wrong-import-position
from research.models import Encoder  # pylint: disable=wrong-import-position
from research.models.sizes import count_params  # pylint: disable=wrong-import-position
from research.transforms import low_rank  # pylint: disable=wrong-import-position


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='minilm-l6')
  p.add_argument('--ranks', default='64,128')
  p.add_argument('--sites', default=r'layer_\d+/mlp/.*')
  p.add_argument('--shapes', default='32x128,8x64')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--repeats', type=int, default=10)
  args = p.parse_args()
  config, params = load_pretrained(args.model)
  models = {'dense': (config, jax.device_put(params))}
  for rank in specs.items(args.ranks, int, what='--ranks'):
    c, q, _ = low_rank.factorize(config, params, rank=rank, sites=args.sites)
    models[f'rank {rank}'] = (c, jax.device_put(q))
  apply = {name: jax.jit(lambda p, ids, mask, c=c: Encoder(c).apply({'params': p}, ids, mask)[0])
           for name, (c, _) in models.items()}
  rng = np.random.default_rng(0)
  rows = []
  print(f'model={args.model} sites={args.sites} backend={jax.default_backend()}')
  for shape in specs.items(args.shapes, what='--shapes'):
    batch, length = (int(v) for v in shape.split('x'))
    ids = rng.integers(1000, config.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    dense_out = np.asarray(apply['dense'](models['dense'][1], ids, mask))
    times = {name: [] for name in models}
    for _ in range(args.rounds):
      for name, (_, p) in models.items():
        times[name].append(time_fn(lambda: apply[name](p, ids, mask).block_until_ready(),
                                   repeats=args.repeats))
    for name, (c, p) in models.items():
      out = np.asarray(apply[name](p, ids, mask))
      cosine = float(np.mean((out * dense_out).sum(-1) / np.linalg.norm(out, axis=-1)
                             / np.linalg.norm(dense_out, axis=-1)))
      best = min(times[name])
      row = {'shape': shape, 'model': name, 'params': count_params(p),
             'gflops': encoder_flops(c, batch, length) / 1e9, 'seq_per_s': batch / best,
             'speedup': min(times['dense']) / best, 'cosine_to_dense': cosine}
      rows.append(row)
      print(f'{shape:>7} {name:>9}: {row["params"]:>10,} params, {row["gflops"]:6.2f} GFLOP, '
            f'{row["seq_per_s"]:7.1f} seq/s, speed-up {row["speedup"]:.2f}, '
            f'cosine to dense {cosine:.4f}')
  print(json.dumps({'benchmark': 'low_rank_cpu', 'model': args.model, 'sites': args.sites,
                    'rows': rows}))


if __name__ == '__main__':
  main()
