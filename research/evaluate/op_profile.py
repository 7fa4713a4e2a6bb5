r"""Time per op class of a compiled function, from profiler traces.

    compiled = jax.jit(f).lower(*args).compile(compile_options())
    row, top = profile(compiled, args, steps=3, warmup=1)
    row['shares']  # {'proj': 61.2, 'attn': 4.0, ...}: % of op time per class

The method follows Pati et al., "Demystifying BERT: implications for accelerator
design" (IISWC 2021); `findings` checks the paper's three findings against rows of
shares. Timing comes from the profiler, not FLOP counts. `profile` runs a compiled
function `warmup` times, times it untraced (`total_ms`: median of `steps` calls), then
runs it `steps` times under `jax.profiler.trace`. The XSpace it writes (`*.xplane.pb`)
is read with `jax.profiler.ProfileData` (`op_times`); each event naming an HLO
instruction of the compiled module (stats `hlo_op`, `hlo_module`) is one execution of
that op, classified by `research.evaluate.hlo_ops`:
- XLA:CPU emits one event per thunk only for modules compiled with
  `xla_cpu_enable_xprof_traceme` (`compile_options`). It spans the thunk's `Execute`
  call. A thunk that completes asynchronously (Eigen dots of the backward pass, large
  parallel loops) also emits an 'end: <op>' event, linked by context id, on the
  completing thread after the executor's continuation there (callbacks run last-in,
  first-out); the op is taken to end where that continuation began (`async_finish`).
  A row's `async_ops` bounds this: those ops' time as bare `Execute` calls, as used,
  and up to their 'end:' events.
- GPU/TPU: the device planes' kernel events with their `hlo_op`; host events are then
  ignored. Written for GPU but not yet run on one; events that match no instruction
  count as 'other' and are reported as `unmatched_ms`.
Ops that ran at the same time share that time (`attribute`: k overlapping ops get 1/k
each; XLA:CPU runs independent thunks on several threads, e.g. the per-call weight
casts and QKV kernel concatenations beside the first layer); an op's time per call is
then its median execution times its executions per call. Shares are of the sum (`op
ms`); `busy` = op ms / traced wall time (the rest: dispatch, waits); `overlap` = summed
op durations / op ms (1.00 = no overlap). Control-flow ops (call, while) are skipped:
their nested ops have their own events.
"""
from __future__ import annotations

import bisect
import glob
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, Sequence

import jax

from research.evaluate.hlo_ops import CLASSES, GEMM, op_class_table

IDLE_GAP_NS = 50_000  # a thread idle this long between two ops was waiting
# Lines of a device plane that repeat or summarise the kernel events.
_DERIVED_LINES = ('XLA Modules', 'Steps', 'Framework Name Scope', 'Framework Ops',
                  'Source code', 'XLA TraceMe', 'Launch Stats', 'TensorFlow Name Scope')


def compile_options() -> dict:
  """Compiler options `profile` needs: per-thunk trace events on XLA:CPU."""
  return {'xla_cpu_enable_xprof_traceme': True} if jax.default_backend() == 'cpu' else {}


def async_finish(starts: list[float], ends: list[float], returned: float,
                 marker: float) -> float:
  """When an asynchronous XLA:CPU thunk finished (ns), from the thread that completed it.

  Args:
    starts: the starts of the op events of the completing thread, sorted.
    ends: the ends of the same events, in the same order.
    returned: when the thunk's `Execute` call returned.
    marker: its 'end:' event, emitted on the completing thread after the executor's
      continuation (completion callbacks run last-in, first-out).
  Returns:
    The start of the run of back-to-back ops (no idle gap of IDLE_GAP_NS) that ends at
    the marker: the continuation started by the completion; the marker if there is none.
  """
  lo = bisect.bisect_left(starts, returned)
  hi = bisect.bisect_left(starts, marker)
  finish = marker
  for i in range(hi - 1, lo - 1, -1):
    if finish - ends[i] > IDLE_GAP_NS:
      break
    finish = starts[i]
  return finish


def attribute(spans: Sequence[tuple[float, float]]) -> list[float]:
  """Each span's share of the time it covers: where k spans overlap, each gets 1/k.

  So ops that ran concurrently (XLA:CPU runs independent thunks on several threads;
  GPU streams) share the wall time they took together.

  Args:
    spans: (start, end) of each op execution.
  Returns:
    The time of each span, in the same order; they add up to the time any op ran.
  """
  edges = sorted([(s, 1, i) for i, (s, _) in enumerate(spans)] +
                 [(e, -1, i) for i, (_, e) in enumerate(spans)])
  shares = [0.0] * len(spans)
  active: set[int] = set()
  last = None
  for t, kind, i in edges:
    if active and t > last:
      for j in active:
        shares[j] += (t - last) / len(active)
    last = t
    if kind > 0:
      active.add(i)
    else:
      active.discard(i)
  return shares


def _stats(event) -> dict:
  return {k: v for k, v in event.stats}


def _device_events(planes, classes, add) -> None:
  """Kernel events of the GPU/TPU planes that name an HLO op."""
  for plane in planes:
    lines = list(plane.lines)
    if any(line.name == 'XLA Ops' for line in lines):  # derived per-op line
      lines = [line for line in lines if line.name == 'XLA Ops']
    else:
      lines = [line for line in lines if line.name not in _DERIVED_LINES]
    for line in lines:
      for event in line.events:
        stats = _stats(event)
        op = str(stats.get('hlo_op', event.name))
        if 'hlo_op' in stats or op in classes:
          add(op, event.name, event.start_ns, event.end_ns, stats)


def _cpu_events(planes, add) -> list[tuple[float, float, float]]:
  """XLA:CPU thunk events, an asynchronous one ending where `async_finish` says.

  Returns (Execute call, used, to 'end:' marker) seconds of each asynchronous op.
  """
  asynchronous = []
  starts, ends, line_starts = [], {}, {}
  for plane in (p for p in planes if p.name == '/host:CPU'):
    for index, line in enumerate(plane.lines):
      key = (plane.name, index)
      for event in line.events:
        stats = _stats(event)
        if event.name.startswith('end: ') and '_c' in stats:
          ends[stats['_c']] = (key, event.start_ns)
        elif 'hlo_op' in stats:
          starts.append((event.start_ns, event.end_ns, str(stats['hlo_op']),
                         stats.get('_p'), stats))
          line_starts.setdefault(key, []).append((event.start_ns, event.end_ns))
  line_ends = {}
  for key, spans in line_starts.items():
    spans.sort()
    line_starts[key] = [s for s, _ in spans]
    line_ends[key] = [e for _, e in spans]
  for start, end, op, producer, stats in starts:
    finish = end
    if producer in ends and ends[producer][1] > end:
      key, marker = ends[producer]
      finish = async_finish(line_starts.get(key, []), line_ends.get(key, []), end, marker)
      asynchronous.append(((end - start) * 1e-9, (finish - start) * 1e-9,
                           (marker - start) * 1e-9))
    add(op, op, start, finish, stats)
  return asynchronous


def op_times(xspace_path: str, module: str, classes: dict[str, str | None]):
  """Seconds per HLO op in a trace, over all its executions.

  Device planes (GPU/TPU kernels) are used when present; otherwise the host's XLA:CPU
  thunk events. Overlapping ops share their time (`attribute`).

  Args:
    xspace_path: an `*.xplane.pb` written by `jax.profiler.trace`.
    module: the HLO module's name (only its events count, if any names it).
    classes: {instruction name: class or None}, from `hlo_ops.op_class_table`.
  Returns:
    (seconds by op, summed op durations without sharing, seconds of events matching
    no instruction, [(Execute call, used, to 'end:' marker) seconds of each
    asynchronous CPU op]).
  """
  planes = list(jax.profiler.ProfileData.from_file(xspace_path).planes)
  device = [p for p in planes if p.name.startswith('/device:') and
            not p.name.startswith('/device:CUSTOM')]
  found: list[tuple[str, str, float, float, str]] = []  # op, event name, start, end, module

  def add(op, name, start, end, stats):
    found.append((op, name, start, end, str(stats.get('hlo_module', ''))))

  asynchronous = []
  if device:
    _device_events(device, classes, add)
  else:
    asynchronous = _cpu_events(planes, add)

  # Only this module's ops (a trace also holds e.g. argument transfers), or every event
  # if none names it; control flow (class None) encloses its nested ops' events.
  ours = [f for f in found if f[4] == module] or found
  ours = [f for f in ours if f[0] not in classes or classes[f[0]] is not None]
  shared = attribute([(f[2] * 1e-9, f[3] * 1e-9) for f in ours])
  runs: dict[tuple[str, str], list[float]] = {}
  unmatched = 0.0
  for (op, name, *_), seconds in zip(ours, shared):
    if op in classes:
      runs.setdefault((op, name), []).append(seconds)
    else:
      unmatched += seconds
  # An op's (or kernel's) total is its median execution times its count: one execution
  # slowed by the host (preempted, page faults) does not skew it.
  totals: dict[str, float] = {}
  for (op, _), times in runs.items():
    totals[op] = totals.get(op, 0.0) + statistics.median(times) * len(times)
  raw = sum(f[3] - f[2] for f in ours) * 1e-9
  return totals, raw, unmatched, asynchronous


def profile(compiled, args: tuple, steps: int, warmup: int,
            carry: Callable[[Any, tuple], tuple] | None = None) -> tuple[dict, list]:
  """Runs a compiled function untraced, then traced, and splits its time by op class.

  Args:
    compiled: a `jax.stages.Compiled`, compiled with `compile_options()` on CPU.
    args: its arguments.
    steps: calls timed untraced, then calls traced.
    warmup: calls before timing.
    carry: `carry(out, args)` gives the next call's arguments (a train step's state,
      when the step donates it); None = the same arguments every call.
  Returns:
    (row, top): row holds 'total_ms' (untraced median per call), 'traced_ms', 'op_ms',
    'busy', 'overlap', 'shares' (% per class of CLASSES), 'ms' (per class per call),
    'other_dropout_ms', 'unmatched_ms' and 'async_ops'; top is [(seconds per call, op,
    class)] of every op, costliest first.
  """
  module, classes, dropout = op_class_table(compiled.as_text())

  def run(n):
    nonlocal args
    times = []
    for _ in range(n):
      t0 = time.perf_counter()
      out = jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - t0)
      if carry is not None:
        args = carry(out, args)
    return times

  run(warmup)
  wall = statistics.median(run(steps))
  folder = tempfile.mkdtemp(prefix='op_profile_')
  try:
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    with jax.profiler.trace(folder, profiler_options=options):
      traced = statistics.median(run(steps))
    path, = glob.glob(os.path.join(folder, 'plugins', 'profile', '*', '*.xplane.pb'))
    per_op, raw, unmatched, asynchronous = op_times(path, module, classes)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  ms = dict.fromkeys(CLASSES, 0.0)
  for op, seconds in per_op.items():
    if classes.get(op) is not None:
      ms[classes[op]] += seconds / steps * 1e3
  ms['other'] += unmatched / steps * 1e3
  total = sum(ms.values())
  bounds = [sum(a[i] for a in asynchronous) / steps * 1e3 for i in range(3)]
  row = {'total_ms': wall * 1e3, 'traced_ms': traced * 1e3, 'op_ms': total,
         'busy': 100.0 * total / (traced * 1e3) if traced else 0.0,
         'overlap': raw / steps * 1e3 / total if total else 0.0,
         'shares': {c: 100.0 * ms[c] / total if total else 0.0 for c in CLASSES}, 'ms': ms,
         'other_dropout_ms': sum(s for op, s in per_op.items() if op in dropout) / steps * 1e3,
         'unmatched_ms': unmatched / steps * 1e3,
         'async_ops': {'count': len(asynchronous) // steps, 'execute_call_ms': bounds[0],
                       'used_ms': bounds[1], 'to_end_marker_ms': bounds[2]}}
  top = sorted(((s / steps, op, classes.get(op)) for op, s in per_op.items()), reverse=True)
  return row, top


def findings(rows: Sequence[dict]) -> tuple[list[str], dict]:
  """Pati et al.'s three findings, checked against measured shares.

  1. projection GEMMs are the largest class at short lengths, and their share falls
     with length; 2. attention products + softmax grow with length; 3. non-GEMM ops
  take a large share (of training time).

  Args:
    rows: `profile` rows with 'mode', 'dtype', 'batch' and 'length' added; findings 1
      and 2 compare the shortest and longest length of each (mode, dtype, batch).
  Returns:
    (lines of text, figures: per-group trends and counts, non-GEMM shares per mode).
  """
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row['mode'], row['dtype'], row['batch']), []).append(row)
  share = lambda r, *classes: sum(r['shares'][c] for c in classes)
  lines, trends = [], []
  for (mode, dtype, batch), group in sorted(groups.items()):
    short, long_ = min(group, key=lambda r: r['length']), max(group, key=lambda r: r['length'])
    trend = {'mode': mode, 'dtype': dtype, 'batch': batch, 'short': short['length'],
             'long': long_['length'], 'largest_at_short': max(CLASSES, key=short['shares'].get),
             **{f'{k}_{end}': share(r, *classes) for k, classes in (
                 ('proj', ('proj',)), ('attn_smax', ('attn', 'smax')), ('smax', ('smax',)))
                for end, r in (('short', short), ('long', long_))}}
    trends.append(trend)
    lines.append(f'  {mode} {dtype} b{batch}: proj GEMM {trend["proj_short"]:.0f}% at len '
                 f'{short["length"]} -> {trend["proj_long"]:.0f}% at {long_["length"]} '
                 f'(largest class at {short["length"]}: {trend["largest_at_short"]}); '
                 f'attn+smax {trend["attn_smax_short"]:.0f}% -> {trend["attn_smax_long"]:.0f}% '
                 f'(smax {trend["smax_short"]:.0f}% -> {trend["smax_long"]:.0f}%)')
  multi = [t for t in trends if t['short'] != t['long']]
  out = {'trends': trends, 'groups_with_two_lengths': len(multi),
         'proj_largest_at_short': sum(t['largest_at_short'] == 'proj' for t in multi),
         'proj_share_falls': sum(t['proj_long'] < t['proj_short'] for t in multi),
         'attn_smax_grows': sum(t['attn_smax_long'] > t['attn_smax_short'] for t in multi)}
  if multi:
    lines.append(f'1. projection GEMMs are the largest class at the shortest length in '
                 f'{out["proj_largest_at_short"]}/{len(multi)} groups; their share falls '
                 f'with length in {out["proj_share_falls"]}/{len(multi)}.')
    lines.append(f'2. attention products + softmax grow with length in '
                 f'{out["attn_smax_grows"]}/{len(multi)} groups.')
  else:
    lines.append('1./2. need two lengths or more per group (--lengths).')
  text = []
  for mode in ('inference', 'training'):
    mine = [r for r in rows if r['mode'] == mode]
    if not mine:
      continue
    non_gemm = [100.0 - share(r, *GEMM) for r in mine]
    means = {c: statistics.fmean(r['shares'][c] for r in mine) for c in CLASSES
             if c not in GEMM}
    means['other_dropout'] = statistics.fmean(
        100.0 * r['other_dropout_ms'] / r['op_ms'] if r['op_ms'] else 0.0 for r in mine)
    out[f'non_gemm_{mode}'] = {'min': min(non_gemm), 'max': max(non_gemm),
                               'mean': statistics.fmean(non_gemm), 'mean_shares': means}
    largest = sorted((c for c in means if c != 'other_dropout'), key=means.get,
                     reverse=True)[:3]
    text.append(f'{mode} {min(non_gemm):.0f}-{max(non_gemm):.0f}% (mean '
                f'{statistics.fmean(non_gemm):.0f}%; largest: ' + ', '.join(
                    f'{c} {means[c]:.0f}%' for c in largest)
                + f'; dropout+RNG {means["other_dropout"]:.0f}%)')
  lines.append('3. non-GEMM share of op time: ' + ('; '.join(text) or 'n/a') + '.')
  return lines, out
