"""Masked-LM pre-training throughput: ours (jitted JAX step) against transformers + PyTorch.

    python benchmarks/pretrain_speed.py               # minilm-l6, 32x128, float32 (minutes)
    python benchmarks/pretrain_speed.py --config small --dtype bfloat16 --nsp
    python benchmarks/pretrain_speed.py --text tinyshakespeare --nsp  # real text, BERT pairs
    python benchmarks/pretrain_speed.py --config tiny --steps 1 --rounds 1 --warmup 0  # smoke

Both sides take the same optimizer steps of masked-LM pre-training (BERT's
`cls.predictions` head, decoder tied to the word embeddings; with `--nsp` also BERT's
next-sentence head on the pooler, loss = MLM mean + NSP mean) from the same weights, on
the same batch: random token ids framed as [CLS] a [SEP] (b [SEP] with --nsp, token types
0/1, random NSP labels), full attention mask; or with `--text tinyshakespeare` (or a
.txt path) real text read by `research/data/corpus.py` with --model's tokenizer (packed
sequences, or NSP pairs padded to --length). The batch is masked once on the host by
`research/data/masking.py` (`mask_batch`: 15 % of the non-special tokens, 80 % [MASK] /
10 % random / 10 % kept); step time does not depend on the token values. Dropout
(`--dropout`, 0.1) is on for both; AdamW (lr 1e-4 constant, weight decay 0.01 except
biases and LayerNorm, eps 1e-8) after global-norm gradient clipping at 1.0.

Weights: `--model minilm-l6` loads the bundled checkpoint's encoder; it has no
pre-training heads, so the MLM transform (and NSP classifier) start fresh. `--config
tiny|small|base` is a randomly initialised BERT of that size (small = 4 layers x 256, as
the LAMB study uses). Either way ours is built first and exported
(`export_pretraining_model`) to a temporary folder that transformers loads, so the two
sides start from identical weights, fresh heads included, and their first losses agree
(exactly up to float rounding with `--dropout 0`).

* ours: `TaskModel` with `MaskedLM` (or `PreTraining(pair='nsp')`; `--predict_share 0.15`
  computes the vocabulary logits only at the masked tokens, as the pre-training config
  does, where the reference computes them at every token), the optimizer from
  `make_optimizer` under `freeze.with_freezing` (everything trains), the trainer's own
  step (`research/train/step.make_train_step`), jitted and donated; `--dtype bfloat16`
  computes in bf16 with float32 params, optimizer and loss.
* reference: `BertForMaskedLM` (or `BertForPreTraining`) in `model.train()`,
  `torch.optim.AdamW` (fused on CUDA), `clip_grad_norm_`; `--dtype bfloat16` runs it
  under `torch.autocast`. On CPU `torch.set_num_threads(BENCH_THREADS=2)`.

Backends: ours runs on jax's default backend and torch on CUDA when available, so the
script runs unchanged on a GPU. There float32 matmuls use TF32 on both sides (JAX's
default precision; torch told to allow it), and MFU is printed too:
  FLOPs per token = 6 N + 12 L T d
(N = parameters used in matmuls: all but the position and token-type tables, the tied
word table counted once as the decoder's matmul; L layers, T = --length, d = heads x
head_dim; the second term is QK^T and AV, forward and backward), divided by the chip's
dense peak for the dtype (a table by device name, or `--peak-tflops`).

After warm-up (compilation for ours), rounds alternate ours, torch, ours, torch, ... so
drifting machine load hits both alike. Each round times `--steps` single steps; a
side's figure is the best (lowest) of its per-round median step times; the per-round
ratios are printed too. The last line is one JSON object {"ours": tokens/s, "torch":
tokens/s, "ratio": ours/torch, ...}. Target (issue): ratio >= 1.2 in bf16. Note: this
project's 2-core CPU is AVX2-only, where bf16 is emulated on both sides, so bf16 figures
measured on it are not representative of bf16 hardware (AMX CPUs, GPUs, TPUs).
Expected numbers: not measured yet (only tiny smoke runs so far).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

THREADS = int(os.environ.get('BENCH_THREADS', '2'))
# XLA:CPU sizes its thread pool from the visible cores; run under `taskset -c 0-1`
# (or on a 2-core machine) so both sides use the same number of cores.
# On a GPU both frameworks share the card: JAX would otherwise take 75 % of it up front.
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.45')

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from research.checkpoints import load_tokenizer
from research.checkpoints.hf_heads import export_pretraining_model, load_pretraining_model
from research.data.corpus import check_vocab, pack_sequences, pair_features, read_documents
from research.data.masking import mask_batch
from research.evaluate import speed
from research.models.config import EncoderConfig
from research.models.heads import TaskModel
from research.objectives import MaskedLM, PreTraining
from research.train import train_state
# pylint: enable=wrong-import-position

LR, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0
# Randomly initialised BERT sizes (vocab 30522 = BERT's uncased WordPiece, except tiny).
CONFIGS = {
    'tiny': dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=2,
                 intermediate_size=256, max_position_embeddings=128),
    'small': dict(vocab_size=30522, hidden_size=256, num_layers=4, num_heads=4,
                  intermediate_size=1024, max_position_embeddings=512),
    'base': dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12,
                 intermediate_size=3072, max_position_embeddings=512),
}
# --text shortcuts: the staged corpora (../shared/data/corpus).
CORPORA_DIR = {'tinyshakespeare': os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    'shared', 'data', 'corpus', 'tinyshakespeare')}
# Dense peak FLOP/s by device name: (bfloat16, float32 as TF32); SXM spec sheets, no
# sparsity (other parts, e.g. PCIe: pass --peak-tflops).
PEAK_FLOPS = {'H200': (989e12, 494e12), 'H100': (989e12, 494e12),
              'A100': (312e12, 156e12), 'L4': (121e12, 60e12)}


def build_model(model: str, preset: str, *, nsp: bool, dtype: str, dropout: float,
                predict_share: float = 0.0):
  """(TaskModel, float32 numpy params) of ours: a checkpoint with fresh heads, or a preset."""
  objective = (PreTraining(pair='nsp', predict_share=predict_share) if nsp
               else MaskedLM(predict_share=predict_share))
  if preset:
    if preset not in CONFIGS:
      raise ValueError(f'unknown --config {preset!r}; expected one of {sorted(CONFIGS)}')
    config = EncoderConfig(**CONFIGS[preset], use_pooler=nsp, dtype=dtype,
                           hidden_dropout=dropout, attention_dropout=dropout)
    task_model = TaskModel(config, objective)
    dummy = np.zeros((1, 4), np.int32)
    params = jax.jit(lambda r: nn.meta.unbox(
        task_model.init(r, dummy, np.ones_like(dummy))['params']))(jax.random.PRNGKey(0))
    return task_model, jax.tree.map(np.asarray, params)
  loaded, params = load_pretraining_model(model, pair='nsp' if nsp else '', dtype=dtype)
  if nsp and 'pooler' not in params['encoder']:
    raise ValueError(f'{model} has no pooler, which BERT\'s NSP head reads; drop --nsp')
  # BertForMaskedLM has no pooler: drop ours too, so both sides hold the same weights.
  config = loaded.encoder.replace(hidden_dropout=dropout, attention_dropout=dropout,
                                  use_pooler=nsp)
  if not nsp:
    params['encoder'].pop('pooler', None)
  return TaskModel(config, objective), params


def special_ids(vocab_size: int) -> tuple[int, int, int, int]:
  """([CLS], [SEP], [MASK], lowest ordinary id): BERT's uncased ids, or 1-3 for tiny vocabs."""
  return (101, 102, 103, 1000) if vocab_size > 2000 else (1, 2, 3, 4)


def random_rows(config: EncoderConfig, batch: int, length: int, nsp: bool,
                rng: np.random.Generator) -> tuple[dict, int]:
  """(unmasked rows of random ids framed by [CLS] / [SEP], the [MASK] id)."""
  cls, sep, mask, low = special_ids(config.vocab_size)
  ids = rng.integers(low, config.vocab_size, (batch, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = cls, sep
  types = np.zeros((batch, length), np.int32)
  if nsp:
    ids[:, length // 2] = sep
    types[:, length // 2 + 1:] = 1
  rows = {'input_ids': ids, 'attention_mask': np.ones((batch, length), np.int32),
          'token_type_ids': types, 'special_tokens_mask': np.isin(ids, (cls, sep))}
  if nsp:
    rows['pair_labels'] = rng.integers(0, 2, (batch,)).astype(np.int32)
  return rows, mask


def text_rows(path: str, tokenizer, config: EncoderConfig, batch: int, length: int,
              nsp: bool) -> tuple[dict, int]:
  """(the first `batch` sequences of a text corpus, padded to `length`; the [MASK] id).

  Packed sequences (`corpus.pack_sequences`) are full length; NSP pairs
  (`corpus.pair_features`) are padded, and the padding is computed (and counted in
  tokens/s) by both sides alike.
  """
  check_vocab(tokenizer, config.vocab_size)
  documents = read_documents(path, max_documents=max(50, 4 * batch) if nsp else 0)
  if nsp:
    features = pair_features(documents, tokenizer, length, task='nsp', seed=0)[:batch]
  else:
    features = list(itertools.islice(pack_sequences(documents, tokenizer, length), batch))
  if len(features) < batch:
    raise ValueError(f'{path} yields only {len(features)} sequences of <= {length} tokens; '
                     f'--batch {batch} needs more text')
  rows = {'input_ids': np.full((batch, length), config.pad_token_id, np.int32),
          'attention_mask': np.zeros((batch, length), np.int32),
          'token_type_ids': np.zeros((batch, length), np.int32),
          'special_tokens_mask': np.ones((batch, length), bool)}
  for row, feature in enumerate(features):
    n = len(feature['input_ids'])
    rows['input_ids'][row, :n] = feature['input_ids']
    rows['attention_mask'][row, :n] = 1
    rows['token_type_ids'][row, :n] = feature.get('token_type_ids', 0)
    rows['special_tokens_mask'][row, :n] = feature['special_tokens_mask'] > 0
  if nsp:
    rows['pair_labels'] = np.asarray([f['pair_labels'] for f in features], np.int32)
  return rows, tokenizer.mask_token_id


def make_batch(config: EncoderConfig, batch: int, length: int, nsp: bool, *, seed: int = 0,
               text: str = '', tokenizer=None) -> dict:
  """A masked pre-training batch (numpy) of random ids, or of `text` read by `tokenizer`."""
  if length < 8 or length > config.max_position_embeddings:
    raise ValueError(f'--length must be in [8, {config.max_position_embeddings}] (the '
                     f'position table), got {length}')
  if batch < 1:
    raise ValueError(f'--batch must be >= 1, got {batch}')
  if text:
    rows, mask = text_rows(CORPORA_DIR.get(text, text), tokenizer, config, batch, length, nsp)
  else:
    rows, mask = random_rows(config, batch, length, nsp, np.random.default_rng(seed))
  out = mask_batch({**rows, 'index': np.arange(batch)}, seed, 0, mask_id=mask,
                   vocab_size=config.vocab_size)
  out.pop('index')
  out['weights'] = np.ones((batch,), np.float32)
  return out


def make_ours(model: TaskModel, params, total_steps: int):
  """Returns (step_fn, state): the trainer's own jitted, donated step (research/train/train_state.py)."""
  return train_state.finetuning_step(model, jax.device_put(params), {
      'learning_rate': LR, 'total_steps': total_steps, 'schedule': 'constant',
      'weight_decay': WEIGHT_DECAY, 'clip_norm': CLIP})


def make_torch(model: TaskModel, params, batch: dict, dtype: str, device: str):
  """Returns a closure running one PyTorch AdamW pre-training step (returns the loss).

  The reference is loaded from ours, exported to a temporary Hugging Face folder.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  nsp = model.objective.kind == 'pretraining'
  cls = transformers.BertForPreTraining if nsp else transformers.BertForMaskedLM
  with tempfile.TemporaryDirectory() as folder:
    export_pretraining_model(model, params, folder)
    reference = cls.from_pretrained(folder).float().to(device)
  torch.manual_seed(0)
  reference.train()
  no_decay = lambda n: n.endswith('bias') or 'LayerNorm' in n
  named = list(reference.named_parameters())
  groups = [{'params': [p for n, p in named if not no_decay(n)], 'weight_decay': WEIGHT_DECAY},
            {'params': [p for n, p in named if no_decay(n)], 'weight_decay': 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=LR, eps=1e-8, fused=device == 'cuda' or None)
  as_long = lambda x: torch.from_numpy(np.asarray(x, np.int64)).to(device)
  inputs = {k: as_long(batch[k]) for k in ('input_ids', 'attention_mask', 'token_type_ids')}
  inputs['labels'] = as_long(batch['labels'])
  if nsp:
    inputs['next_sentence_label'] = as_long(batch['pair_labels'])
  autocast = dtype != 'float32'

  def step():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
      loss = reference(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())  # synchronises a CUDA device too

  return step


def flops_per_token(config: EncoderConfig, params, length: int) -> float:
  """6 N + 12 L T d: matmul parameters N and attention scores (see the module docstring)."""
  embeddings = params['encoder']['embeddings']
  lookups = sum(int(np.size(embeddings[k]['embedding'])) for k in
                ('position_embeddings', 'token_type_embeddings') if k in embeddings)
  matmul_params = sum(int(np.size(x)) for x in jax.tree.leaves(params)) - lookups
  width = sum(config.heads(i) for i in range(config.num_layers)) * config.head_dim
  return 6.0 * matmul_params + 12.0 * length * width


def peak_flops(device_kind: str, dtype: str, override_tflops: float) -> float | None:
  """The chip's dense peak FLOP/s for `dtype`, or None when unknown (CPUs)."""
  if override_tflops:
    return override_tflops * 1e12
  for name, (bf16, tf32) in PEAK_FLOPS.items():
    if name in device_kind:
      return bf16 if dtype == 'bfloat16' else tf32
  return None


def run(args: argparse.Namespace) -> dict:
  """Builds both sides, times them in alternated rounds, prints a report; returns the JSON dict."""
  for name in ('steps', 'rounds'):
    if getattr(args, name) < 1:
      raise ValueError(f'--{name} must be >= 1, got {getattr(args, name)}')
  if args.warmup < 0 or not 0.0 <= args.dropout < 1.0:
    raise ValueError(f'--warmup must be >= 0 and --dropout in [0, 1), got {args.warmup} '
                     f'and {args.dropout}')
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  transformers.logging.set_verbosity_error()  # the expected unused-pooler / tied-weight notes
  transformers.logging.disable_progress_bar()
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if device == 'cpu':
    torch.set_num_threads(THREADS)
  else:  # float32 matmuls in TF32, as JAX does by default on recent GPUs
    torch.set_float32_matmul_precision('high')

  t0 = time.perf_counter()
  model, params = build_model(args.model, args.config, nsp=args.nsp, dtype=args.dtype,
                              dropout=args.dropout, predict_share=args.predict_share)
  tokenizer = load_tokenizer(args.model) if args.text else None
  batch = make_batch(model.encoder, args.batch, args.length, args.nsp, text=args.text,
                     tokenizer=tokenizer)
  train_step, state = make_ours(model, params, args.warmup + args.rounds * args.steps + 1)
  device_batch = jax.device_put(batch)
  box = {'state': state, 'loss': []}

  def ours_step():
    box['state'], metrics = train_step(box['state'], device_batch)
    box['loss'].append(float(metrics['loss']))  # blocks until the step is done

  ours_step()  # compiles; its loss is the first one, at the shared initial weights
  compile_s = time.perf_counter() - t0
  torch_step = make_torch(model, params, batch, args.dtype, device)
  torch_loss = [torch_step()]
  medians = speed.step_medians(
      {'ours': ours_step, 'torch': lambda: torch_loss.append(torch_step())},
      warmup=args.warmup, rounds=args.rounds, per_round=args.steps)
  compiles = train_step._cache_size()  # pylint: disable=protected-access
  ours_med, torch_med = medians['ours'], medians['torch']
  s_ours, s_torch = min(ours_med), min(torch_med)
  tokens = args.batch * args.length
  flops = flops_per_token(model.encoder, params, args.length)
  jax_device = jax.devices()[0]
  peak = peak_flops(getattr(jax_device, 'device_kind', ''), args.dtype, args.peak_tflops)

  name = args.config or args.model
  print(f'model={name} nsp={args.nsp} text={args.text or "random ids"} batch={args.batch} '
        f'length={args.length} dtype={args.dtype} dropout={args.dropout} jax={jax.__version__} '
        f'({jax.default_backend()}: {jax_device.device_kind}) torch={torch.__version__} '
        f'({device}) transformers={transformers.__version__} threads={THREADS} '
        f'cpus={os.cpu_count()}')
  if (jax.default_backend() == 'cpu') != (device == 'cpu'):
    print('WARNING: ours and torch run on different kinds of device; the ratio compares them')
  print(f'ours: setup+compile {compile_s:.1f}s, {compiles} compiled train step(s); '
        f'{args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up steps')
  print(f'per-round median step ms: ours {" ".join(f"{t * 1e3:.0f}" for t in ours_med)}; '
        f'torch {" ".join(f"{t * 1e3:.0f}" for t in torch_med)}')
  print(f'loss first->last: ours {box["loss"][0]:.4f}->{box["loss"][-1]:.4f}; '
        f'torch {torch_loss[0]:.4f}->{torch_loss[-1]:.4f} (same weights and batch at the first)')
  print(f'FLOPs/token = 6 N + 12 L T d = {flops / 1e6:.1f} M'
        + (f'; peak {peak / 1e12:.0f} TFLOP/s' if peak else '; MFU: no peak known (CPU)'))
  print()
  print(f'{"side":<8} {"step ms":>9} {"tokens/s":>11}' + (f' {"MFU %":>7}' if peak else ''))
  result = {'ours': tokens / s_ours, 'torch': tokens / s_torch, 'ratio': s_torch / s_ours}
  for side, seconds in (('ours', s_ours), ('torch', s_torch)):
    mfu = f' {100 * flops * tokens / seconds / peak:7.1f}' if peak else ''
    print(f'{side:<8} {seconds * 1e3:9.1f} {tokens / seconds:11.1f}{mfu}')
    if peak:
      result[f'mfu_{side}'] = flops * tokens / seconds / peak
  print(f'ratio ours/torch (tokens/s): {s_torch / s_ours:.2f}  (target >= 1.2 in bfloat16)')
  paired = [t / o for o, t in zip(ours_med, torch_med)]  # drift check, round by round
  print(f'per-round ratios: {" ".join(f"{r:.2f}" for r in paired)} '
        f'(median {statistics.median(paired):.2f})')
  result.update({
      'benchmark': 'pretrain_speed', 'model': name, 'nsp': args.nsp,
      'predict_share': args.predict_share, 'batch': args.batch, 'length': args.length, 'dtype': args.dtype, 'dropout': args.dropout,
      'text': args.text,
      'backend': jax.default_backend(), 'torch_device': device, 'threads': THREADS,
      'flops_per_token': flops, 'loss_first': {'ours': box['loss'][0], 'torch': torch_loss[0]},
      'loss_last': {'ours': box['loss'][-1], 'torch': torch_loss[-1]},
      'per_round_ratios': paired})
  return result


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='minilm-l6', help='checkpoint (encoder) to load')
  parser.add_argument('--config', default='', choices=('',) + tuple(CONFIGS),
                      help='a random-initialised size instead of --model')
  parser.add_argument('--nsp', action='store_true', help='MLM + next-sentence prediction')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps per side')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--dropout', type=float, default=0.1)
  parser.add_argument('--predict_share', type=float, default=0.0,
                      help='ours: vocabulary logits only at the masked tokens (0.15 as '
                      'experiments/configs/pretrain.py); 0 = at every token, as the reference')
  parser.add_argument('--text', default='', help="'' = random token ids; 'tinyshakespeare' "
                      "or a .txt file / folder, read with --model's tokenizer")
  parser.add_argument('--peak-tflops', type=float, default=0.0,
                      help='the chip\'s dense peak for MFU (default: a table of GPUs)')
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  result = run(parse_args(argv))
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()
