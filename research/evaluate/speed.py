"""Speed of models, side by side in one process: the one timer, sequences/s, FLOPs.

    batches = length_batches(tokenizer, examples, batch=32, max_length=128)
    rates = sequences_per_second({'teacher': runner(teacher), 'student': runner(student)},
                                 batches, rounds=3)

Each runner encodes every batch once per round; rounds alternate between runners, so a
load that drifts during the measurement hits all of them alike, and the best round
counts (the least disturbed). `length_batches` pads each batch to its own longest
sentence (dynamic length, as FastFormers) or, with `dynamic=False`, every batch to
`max_length` (the static padding a fixed-shape server uses). Benchmark scripts and the
compression pipeline's report use this; tests never time anything. `step_medians` is
the one clock (alternated rounds); `time_fn`, `sequences_per_second` and `timed_twice`
are built on it. `encoder_flops` counts a forward pass's FLOPs.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.models import projections
from research.models.config import EncoderConfig


def length_batches(tokenizer, examples: Sequence[Mapping[str, Any]], batch: int,
                   max_length: int, pad_multiple: int = 8, dynamic: bool = True
                   ) -> list[dict[str, np.ndarray]]:
  """Token batches of `examples` ({'text_a', optional 'text_b'}) in their given order."""
  if batch < 1 or not examples:
    raise ValueError(f'need a batch size >= 1 and examples, got {batch} and '
                     f'{len(examples)} examples')
  out = []
  for i in range(0, len(examples), batch):
    chunk = examples[i:i + batch]
    pairs = [e.get('text_b') for e in chunk]
    enc = tokenizer([e['text_a'] for e in chunk], pairs if any(pairs) else None,
                    truncation=True, max_length=max_length)
    width = max_length
    if dynamic:
      width = min(max_length, -(-max(len(x) for x in enc['input_ids']) // pad_multiple)
                  * pad_multiple)
    ids = np.zeros((len(chunk), width), np.int32)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for r, row in enumerate(enc['input_ids']):
      ids[r, :len(row)] = row
      mask[r, :len(row)] = 1
      if 'token_type_ids' in enc:
        types[r, :len(row)] = enc['token_type_ids'][r]
    out.append({'input_ids': ids, 'attention_mask': mask, 'token_type_ids': types})
  return out


def runner(model, params) -> Callable[[dict], Any]:
  """A jitted forward of a TaskModel that blocks until its outputs are ready.

  The params are put on the device once: a restored run may hold numpy arrays, which
  jit would otherwise copy to the device on every call (a large cost at batch 1).
  """
  params = jax.device_put(params)
  forward = jax.jit(lambda p, ids, mask, types: model.apply(
      {'params': p}, ids, mask, types, deterministic=True)[0])

  def run(batch):
    return jax.block_until_ready(forward(params, batch['input_ids'],
                                         batch['attention_mask'], batch['token_type_ids']))
  return run


def sequences_per_second(runners: Mapping[str, Callable[[dict], Any]],
                         batches: Sequence[dict] | Mapping[str, Sequence[dict]],
                         rounds: int = 3) -> dict[str, float]:
  """Best-round sequences/s of each runner over `batches` (or its own batch list).

  Every runner first runs all its batches once (compilation), then `rounds` alternated
  rounds of all its batches (`step_medians` with one call per round).
  """
  own = (lambda name: batches[name]) if isinstance(batches, Mapping) else (lambda _: batches)
  passes = {name: (lambda run=run, name=name: [run(b) for b in own(name)])
            for name, run in runners.items()}
  seconds = step_medians(passes, warmup=1, rounds=rounds, per_round=1)
  return {name: sum(len(b['input_ids']) for b in own(name)) / min(seconds[name])
          for name in runners}


def step_medians(steps: Mapping[str, Callable[[], Any]], warmup: int, rounds: int,
                 per_round: int) -> dict[str, list[float]]:
  """Per-round median seconds of each blocking step function, rounds alternated.

  The one timer of this codebase: every other figure here is built on it. Each step
  runs `warmup` times first (interleaved), then `rounds` rounds of `per_round` timed
  calls each, one side after the other, so drift in the machine's load hits every side
  alike; the caller usually keeps each side's best round (`min`).
  """
  if rounds < 1 or per_round < 1 or warmup < 0:
    raise ValueError(f'need rounds >= 1, per_round >= 1 and warmup >= 0, got {rounds}, '
                     f'{per_round} and {warmup}')
  for _ in range(warmup):
    for step in steps.values():
      step()
  medians = {name: [] for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      medians[name].append(statistics.median(timed_call(step)[1] for _ in range(per_round)))
  return medians


def time_fn(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10) -> float:
  """Median wall-clock seconds of one call of `fn` (which must block until done)."""
  return step_medians({'fn': fn}, warmup=warmup, rounds=1, per_round=repeats)['fn'][0]


# The instruction-set features that decide which CPU kernels run (what a figure depends on).
_CPU_FEATURES = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx_vnni',
                 'avx512_bf16', 'amx_tile', 'amx_int8', 'amx_bf16', 'amx_fp16')


def cpu_flags(cpuinfo: str = '/proc/cpuinfo') -> list[str]:
  """The kernel-relevant instruction-set features of this CPU (Linux /proc/cpuinfo; on
  other systems the platform's machine name), for printing beside every speed figure."""
  try:
    with open(cpuinfo) as f:
      line = next((l for l in f if l.startswith('flags')), '')
  except OSError:
    import platform  # pylint: disable=g-import-not-at-top
    return [platform.machine() or 'unknown']
  have = set(line.split(':', 1)[-1].split())
  return [x for x in _CPU_FEATURES if x in have] or ['none of ' + ','.join(_CPU_FEATURES)]


def timed_call(fn: Callable[[], Any]) -> tuple[Any, float]:
  """(fn(), its wall-clock seconds): `fn` must block until its result is ready."""
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def timed_twice(fn: Callable[[], Any]) -> tuple[Any, float, float]:
  """(result, seconds of a second call, seconds of the first): the first compiles."""
  _, first = timed_call(lambda: jax.block_until_ready(fn()))
  result, seconds = timed_call(lambda: jax.block_until_ready(fn()))
  return result, seconds, first


def synthetic_batches(batch: int, length: int, count: int = 1, seed: int = 0,
                      vocab: tuple[int, int] = (1000, 2000)) -> list[dict[str, np.ndarray]]:
  """`count` batches of random token ids [batch, length] with full attention masks."""
  rng = np.random.default_rng(seed)
  return [{'input_ids': rng.integers(*vocab, (batch, length)).astype(np.int32),
           'attention_mask': np.ones((batch, length), np.int32),
           'token_type_ids': np.zeros((batch, length), np.int32)} for _ in range(count)]


def folder_bytes(folder: str) -> int:
  """Bytes of the files under `folder` (a run's `best/` checkpoint: its size on disk)."""
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(folder) for f in files)


# -- FLOP counts -----------------------------------------------------------------

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


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
  """Measured dense float32 matmul rate of this machine through XLA, in GFLOP/s."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  seconds = time_fn(lambda: f(a).block_until_ready(), repeats=repeats)
  return 2 * size ** 3 / seconds / 1e9
