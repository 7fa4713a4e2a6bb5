r"""Op-level cost profile of MiniLM inference and training, from profiler traces.

    python benchmarks/op_profile.py --quick        # batch 1, lengths 64 and 256 (minutes)
    python benchmarks/op_profile.py                # the full sweep (hours on 2 cores)
    python benchmarks/op_profile.py --modes inference --dtypes float32,int8 \
        --batches 8 --lengths 64,512 --show_ops 15 --png /tmp/op_profile.png

In the spirit of Pati et al., "Demystifying BERT: implications for accelerator design"
(IISWC 2021): projection GEMMs dominate at short sequence lengths; the attention
score/context products and softmax grow with length; non-GEMM ops take a large share of
training time. The bundled MiniLM-L6 runs (a) inference (`Encoder.apply`, last hidden
state) and (b) the trainer's own train step (`make_train_step`, built as in
benchmarks/finetune_cpu.py: forward, backward, global-norm clipping, AdamW; dropout
0.1; the optimizer update under `hlo_ops.OPTIMIZER_SCOPE`, so it counts as 'opt') at
lengths 64/128/256/512 and batches 1/8/32, in float32, bfloat16 (the encoder config's
`dtype`) and int8 (`quantize.calibrate` then `quantize.ptq` as in
benchmarks/int8_cpu.py, inference only, calibrated on random ids: scales, not speed).
Inputs are random token ids with a full attention mask.

The method is the library's: research/evaluate/op_profile.py runs each compiled
configuration untraced and under the profiler and attributes the trace's time to ops
(and checks the paper's findings); research/evaluate/hlo_ops.py classifies the ops from
the optimized HLO (proj, attn, smax, LN, GELU, emb, opt, data, other). Their docstrings
describe both.

Output: a table row per mode x dtype x batch x length (% per class, total ms, op ms,
busy, ovlp), a stacked-bar PNG (`--png`, default docs/op_profile.png; '' for none; needs
matplotlib), the paper's three findings computed from the shares, and last one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from research import specs  # pylint: disable=wrong-import-position
from research.checkpoints import load_pretrained  # pylint: disable=wrong-import-position
from research.evaluate import op_profile  # pylint: disable=wrong-import-position
from research.evaluate.hlo_ops import CLASSES  # pylint: disable=wrong-import-position
from research.evaluate.plots import op_class_shares  # pylint: disable=wrong-import-position
from research.models import Encoder  # pylint: disable=wrong-import-position
from research.models.heads import TaskModel  # pylint: disable=wrong-import-position
from research.objectives import Classification  # pylint: disable=wrong-import-position
from research.train import train_state  # pylint: disable=wrong-import-position
from research.transforms import quantize  # pylint: disable=wrong-import-position

DROPOUT = 0.1

# -- The two workloads ------------------------------------------------------------------

def random_batch(config, batch: int, length: int, seed: int = 0) -> dict:
  """Random token ids (full attention mask) and labels: a classification batch."""
  rng = np.random.default_rng(seed)
  return {'input_ids': rng.integers(1000, config.vocab_size, (batch, length)).astype(np.int32),
          'attention_mask': np.ones((batch, length), np.int32),
          'token_type_ids': np.zeros((batch, length), np.int32),
          'labels': rng.integers(0, 2, (batch,)).astype(np.int32),
          'weights': np.ones((batch,), np.float32)}


def inference(config, params, batch: dict):
  """(compiled forward, args): the encoder's last hidden state, no dropout."""
  fn = jax.jit(lambda p, ids, mask: Encoder(config).apply({'params': p}, ids, mask)[0])
  args = (jax.device_put(params), jnp.asarray(batch['input_ids']),
          jnp.asarray(batch['attention_mask']))
  return fn.lower(*args).compile(op_profile.compile_options()), args


def training(config, encoder_params, batch: dict):
  """(compiled train step, args): the trainer's step, as benchmarks/finetune_cpu.py."""
  objective = Classification(num_labels=2, pooling='cls', head_dropout=DROPOUT)
  model = TaskModel(config, objective)
  params = model.init(jax.random.PRNGKey(0), batch['input_ids'][:1],
                      batch['attention_mask'][:1])['params']
  params = jax.device_put({**params, 'encoder': encoder_params})
  step, state = train_state.finetuning_step(model, params, {
      'learning_rate': 1e-4, 'total_steps': 1000, 'schedule': 'constant',
      'weight_decay': 0.01, 'clip_norm': 1.0})
  args = (state, jax.device_put(batch))
  return step.lower(*args).compile(op_profile.compile_options()), args


def load(model: str, dtype: str, mode: str):
  """(config, encoder params) for a dtype; int8 is calibrated and converted by PTQ."""
  dropout = {'hidden_dropout': DROPOUT, 'attention_dropout': DROPOUT} if mode == 'training' else {}
  config, params = load_pretrained(model, dtype='float32' if dtype == 'int8' else dtype,
                                   **dropout)
  if dtype == 'int8':
    calibration = [random_batch(config, 8, 64, seed=s) for s in (1, 2)]
    stats = quantize.calibrate(Encoder(config), params, calibration)
    config, params = quantize.ptq(config, params, stats, 'max')
  return config, params


# -- Report -----------------------------------------------------------------------------

def table_line(row: dict) -> str:
  shares = ' '.join(f'{row["shares"][c]:5.1f}' for c in CLASSES)
  return (f'{row["mode"]:<9} {row["dtype"]:<8} {row["batch"]:>3} {row["length"]:>4} '
          f'{shares} {row["total_ms"]:9.1f} {row["op_ms"]:9.1f} {row["busy"]:5.0f} '
          f'{row["overlap"]:5.2f}')


def table_header() -> str:
  return (f'{"mode":<9} {"dtype":<8} {"bat":>3} {"len":>4} '
          + ' '.join(f'{c:>5}' for c in CLASSES)
          + f' {"total ms":>9} {"op ms":>9} {"busy":>5} {"ovlp":>5}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='minilm-l6')
  parser.add_argument('--modes', default='inference,training')
  parser.add_argument('--dtypes', default='float32,bfloat16,int8')
  parser.add_argument('--batches', default='1,8,32')
  parser.add_argument('--lengths', default='64,128,256,512')
  parser.add_argument('--steps', type=int, default=3, help='timed and profiled calls each')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--quick', action='store_true',
                      help='batch 1, lengths 64 and 256, steps 2 (overrides those flags)')
  parser.add_argument('--png', default='docs/op_profile.png', help="'' = no figure")
  parser.add_argument('--show_ops', type=int, default=0,
                      help='also print the N costliest ops of each row with their class')
  args = parser.parse_args()
  if args.quick:
    args.batches, args.lengths, args.steps = '1', '64,256', 2
  modes = specs.items(args.modes, what='--modes')
  dtypes = specs.items(args.dtypes, what='--dtypes')
  batches = specs.items(args.batches, int, what='--batches')
  lengths = specs.items(args.lengths, int, what='--lengths')
  device = jax.devices()[0]
  print(f'model={args.model} backend={jax.default_backend()} device={device.device_kind} '
        f'cpus={os.cpu_count()} jax={jax.__version__} steps={args.steps} '
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  print('shares in % of op time; total ms: untraced wall time per call (median); busy: '
        'op ms / traced wall %; ovlp: summed op durations / op ms', flush=True)
  print(table_header(), flush=True)
  rows = []
  for mode in modes:
    for dtype in dtypes:
      if mode == 'training' and dtype == 'int8':
        continue  # PTQ int8 is an inference path
      config, params = load(args.model, dtype, mode)
      for batch in batches:
        for length in lengths:
          data = random_batch(config, batch, length)
          t0 = time.perf_counter()
          if mode == 'inference':
            compiled, call_args = inference(config, params, data)
            carry = None
          else:
            compiled, call_args = training(config, params, data)
            carry = lambda out, a: (out[0], a[1])
          setup_s = time.perf_counter() - t0
          figures, top = op_profile.profile(compiled, call_args, args.steps, args.warmup, carry)
          row = {'mode': mode, 'dtype': dtype, 'batch': batch, 'length': length,
                 **figures, 'setup_compile_s': setup_s}
          rows.append(row)
          print(table_line(row), flush=True)
          for seconds, op, cls in top[:args.show_ops]:
            print(f'      {seconds * 1e3:8.2f} ms  {cls or "-":<6} {op}', flush=True)
          del compiled, call_args
  print()
  print('Pati et al. findings against these measurements (shares of op time):')
  lines, summary = op_profile.findings(rows)
  for line in lines:
    print(line)
  if args.png:
    try:
      print(f'wrote {op_class_shares(rows, args.png)}')
    except ImportError:
      print('matplotlib is not installed: no PNG (the table and JSON hold the same figures)')
  print(json.dumps({'benchmark': 'op_profile', 'model': args.model,
                    'backend': jax.default_backend(), 'device': device.device_kind,
                    'cpus': os.cpu_count(), 'jax': jax.__version__, 'steps': args.steps,
                    'classes': list(CLASSES), 'rows': rows, 'findings': summary}))


if __name__ == '__main__':
  main()
