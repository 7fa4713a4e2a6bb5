"""Sequences per second of saved runs on real sentences, side by side in one process.

    batches = length_batches(tokenizer, examples, batch=32, max_length=128)
    rates = sequences_per_second({'teacher': runner(teacher), 'student': runner(student)},
                                 batches, rounds=3)

Each runner encodes every batch once per round; rounds alternate between runners, so a
load that drifts during the measurement hits all of them alike, and the best round
counts (the least disturbed). `length_batches` pads each batch to its own longest
sentence (dynamic length, as FastFormers) or, with `dynamic=False`, every batch to
`max_length` (the static padding a fixed-shape server uses). Benchmark scripts and the
compression pipeline's report use this; tests never time anything.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np


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

  Every shape is run once first (compilation), then `rounds` alternated rounds.
  """
  if rounds < 1:
    raise ValueError(f'rounds must be >= 1, got {rounds}')
  own = (lambda name: batches[name]) if isinstance(batches, Mapping) else (lambda _: batches)
  for name, run in runners.items():
    for b in own(name):
      run(b)
  best = {name: float('inf') for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      for b in own(name):
        run(b)
      best[name] = min(best[name], time.perf_counter() - start)
  return {name: sum(len(b['input_ids']) for b in own(name)) / best[name] for name in runners}


def step_medians(steps: Mapping[str, Callable[[], Any]], warmup: int, rounds: int,
                 per_round: int) -> dict[str, list[float]]:
  """Per-round median seconds of each blocking step function, rounds alternated.

  Each step runs `warmup` times first (interleaved), then `rounds` rounds of `per_round`
  timed calls each, one side after the other, so drift in the machine's load hits every
  side alike; the caller usually keeps each side's best round (`min`).
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
      times = []
      for _ in range(per_round):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
      medians[name].append(statistics.median(times))
  return medians


def folder_bytes(folder: str) -> int:
  """Bytes of the files under `folder` (a run's `best/` checkpoint: its size on disk)."""
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(folder) for f in files)
