r"""Post-training int8 on CPU: ours (static scales, int8 x int8 -> int32) against qwix and float.

    python benchmarks/int8_cpu.py                      # MiniLM-L6, SST-2 dev lengths
    python benchmarks/int8_cpu.py --sentences 128 --calibration mse

The bundled MiniLM encoder is calibrated on SST-2 train sentences
(`research/transforms/quantize.py`: `calibrate`, then `ptq`), and four encoders encode
the same SST-2 dev sentences, each batch padded to its longest sentence (a multiple of
8), at batch 1 and 32, alternating rounds so drifting load hits all alike:
- float32 (fused QKV, the default);
- ours int8: per-channel int8 kernels, one static scale per projection input, int8 x
  int8 -> int32 products;
- ours int8 simulated: the same int8 values multiplied in float32 (the reference the
  integer path must match);
- ours int4 (w4a8): kernels on the 4-bit grid packed two per byte, unpacked per call;
- qwix 0.1.8 `PtqProvider` w8a8 (weights int8 per channel via `quantize_params`,
  activations quantized dynamically per call), when qwix is installed: once on the same
  projections as ours, once on every product (also attention scores and context, which
  ours keeps in float).
Printed per model: sequences/s, speed-up over float32, bytes of the projection weights,
the mean cosine between its last hidden states and float32's, and the largest absolute
difference from our simulated reference. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from research import specs  # pylint: disable=wrong-import-position
from research.checkpoints import load_pretrained  # pylint: disable=wrong-import-position
from research.checkpoints.hf_load import load_tokenizer  # pylint: disable=wrong-import-position
from research.data.sources import default_data_dir, load_examples  # pylint: disable=wrong-import-position
from research.evaluate import speed  # pylint: disable=wrong-import-position
from research.models import Encoder  # pylint: disable=wrong-import-position
from research.transforms import quantize  # pylint: disable=wrong-import-position


def batches(tokenizer, texts, batch, max_length=128):
  out = []
  for i in range(0, len(texts), batch):
    enc = tokenizer(texts[i:i + batch], truncation=True, max_length=max_length)
    longest = max(len(x) for x in enc['input_ids'])
    width = -(-longest // 8) * 8
    ids = np.zeros((len(enc['input_ids']), width), np.int32)
    mask = np.zeros_like(ids)
    for r, row in enumerate(enc['input_ids']):
      ids[r, :len(row)] = row
      mask[r, :len(row)] = 1
    out.append({'input_ids': ids, 'attention_mask': mask})
  return out


def weight_bytes(params) -> int:
  """Bytes of the projection weights (kernels, int8 values and their scales)."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
    if any(n.startswith('layer_') for n in names) and not any('norm' in n for n in names) \
        and names[-1] != 'bias':
      total += np.asarray(leaf).nbytes
  return total


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='minilm-l6')
  p.add_argument('--data_dir', default=default_data_dir())
  p.add_argument('--sentences', type=int, default=256, help='SST-2 dev sentences timed')
  p.add_argument('--calibration', default='max', choices=quantize.CALIBRATIONS)
  p.add_argument('--calibration_sentences', type=int, default=512)
  p.add_argument('--batch_sizes', default='1,32')
  p.add_argument('--rounds', type=int, default=3)
  args = p.parse_args()

  config, params = load_pretrained(args.model)
  tokenizer = load_tokenizer(args.model)
  train = [e['text_a'] for e in load_examples('sst2', 'train', args.data_dir)]
  dev = [e['text_a'] for e in load_examples('sst2', 'validation', args.data_dir)]
  stats = quantize.calibrate(Encoder(config), params,
                             batches(tokenizer, train[:args.calibration_sentences], 32))
  int8_config, int8_params = quantize.ptq(config, params, stats, args.calibration)
  simulated_config = int8_config.replace(projections=tuple(
      (site, 'int8:simulate') for site, _ in int8_config.projections))
  int4_config, int4_params = quantize.ptq(config, params, stats, args.calibration, bits=4)
  models = {'float32': (config, params), 'ours int8': (int8_config, int8_params),
            'ours int8 simulated': (simulated_config, int8_params),
            'ours int4 (w4a8)': (int4_config, int4_params)}
  apply = {name: jax.jit(lambda p_, ids, mask, c=c: Encoder(c).apply(
      {'params': p_}, ids, mask)[0]) for name, (c, _) in models.items()}
  try:
    import qwix  # pylint: disable=g-import-not-at-top
    unfused = config.replace(fuse_qkv=False)  # qwix sees a weight only in its own module
    ids0 = jnp.ones((1, 8), jnp.int32)
    scopes = {'qwix w8a8': r'.*/(query|key|value|out|intermediate|output)',  # as ours
              'qwix w8a8 + attention': '.*'}  # also the score and context products
    for name, scope in scopes.items():
      rules = [qwix.QuantizationRule(module_path=scope, weight_qtype=jnp.int8,
                                     act_qtype=jnp.int8)]
      qmodel = qwix.quantize_model(Encoder(unfused), qwix.PtqProvider(rules))
      abstract = nn.meta.unbox(
          jax.eval_shape(qmodel.init, jax.random.PRNGKey(0), ids0)['params'])
      models[name] = (unfused, qwix.quantize_params(jax.tree.map(jnp.asarray, params),
                                                    abstract))
      apply[name] = jax.jit(lambda p_, ids, mask, m=qmodel: m.apply({'params': p_}, ids,
                                                                     mask)[0])
  except ImportError:
    print('qwix not installed: its row is skipped')

  print(f'model={args.model} calibration={args.calibration} backend={jax.default_backend()} '
        f'cpus={os.cpu_count()} jax={jax.__version__}')
  rows = []
  for batch in specs.items(args.batch_sizes, int, what='--batch_sizes'):
    data = batches(tokenizer, dev[:args.sentences], batch)
    # One pass over every batch per call; the warm-up pass compiles every shape.
    passes = {name: (lambda name=name, p_=p_: [
        apply[name](p_, b['input_ids'], b['attention_mask']).block_until_ready() for b in data])
              for name, (_, p_) in models.items()}
    seconds = speed.step_medians(passes, warmup=1, rounds=args.rounds, per_round=1)
    first = data[:4] if batch > 1 else data[:32]
    outs = {name: [np.asarray(apply[name](p_, b['input_ids'], b['attention_mask']))
                   for b in first] for name, (_, p_) in models.items()}

    def cosine(name):
      values = []
      for o, f, b in zip(outs[name], outs['float32'], first):
        c = (o * f).sum(-1) / np.linalg.norm(o, axis=-1) / np.linalg.norm(f, axis=-1)
        values.append(c[b['attention_mask'] > 0])
      return float(np.mean(np.concatenate(values)))

    for name, (_, p_) in models.items():
      best = min(seconds[name])
      row = {'batch': batch, 'model': name, 'seq_per_s': args.sentences / best,
             'speedup': min(seconds['float32']) / best, 'weight_bytes': weight_bytes(p_),
             'cosine_to_float': cosine(name),
             'max_abs_diff_to_simulated': float(max(
                 np.abs(o - s).max() for o, s in zip(outs[name], outs['ours int8 simulated'])))}
      rows.append(row)
      print(f'batch {batch:>3} {name:>20}: {row["seq_per_s"]:8.1f} seq/s, speed-up '
            f'{row["speedup"]:.2f}, weights {row["weight_bytes"] / 2**20:5.2f} MiB, cosine to '
            f'float {row["cosine_to_float"]:.4f}, max |diff| to simulated '
            f'{row["max_abs_diff_to_simulated"]:.2e}')
  print(json.dumps({'benchmark': 'int8_cpu', 'model': args.model, 'calibration':
                    args.calibration, 'sentences': args.sentences, 'rows': rows}))


if __name__ == '__main__':
  main()
