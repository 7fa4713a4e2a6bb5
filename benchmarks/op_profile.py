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
0.1) at lengths 64/128/256/512 and batches 1/8/32, in float32, bfloat16 (the encoder
config's `dtype`) and int8 (`quantize.calibrate` then `quantize.ptq` as in
benchmarks/int8_cpu.py, inference only, calibrated on random ids: scales, not speed).
Inputs are random token ids with a full attention mask.

Timing comes from the profiler, not FLOP counts. Each configuration is compiled once,
run `--warmup` times, timed untraced (`total ms`: median of `--steps` calls), then run
`--steps` times under `jax.profiler.trace`. The XSpace it writes (`*.xplane.pb`) is read
with `jax.profiler.ProfileData`; each event naming an HLO instruction of the compiled
module (stats `hlo_op`, `hlo_module`) is one execution of that op:
- XLA:CPU emits one event per thunk only for modules compiled with
  `xla_cpu_enable_xprof_traceme` (a compiler option of this benchmark's own compile).
  It spans the thunk's `Execute` call. A thunk that completes asynchronously (Eigen dots
  of the backward pass, large parallel loops) also emits an 'end: <op>' event, linked
  by context id, on the completing thread after the executor's continuation there
  (callbacks run last-in, first-out); the op is taken to end where that continuation
  began (`async_finish`). Each row's `async_ops` bounds this: those ops' time as bare
  `Execute` calls, as used, and up to their 'end:' events.
- GPU/TPU: the device planes' kernel events with their `hlo_op`; host events are then
  ignored. Written for GPU but not yet run on one; events that match no instruction
  count as 'other' and are reported as `unmatched_ms`.
Ops that ran at the same time share that time (`attribute`: k overlapping ops get 1/k
each; XLA:CPU runs independent thunks on several threads, e.g. the per-call weight
casts and QKV kernel concatenations beside the first layer); an op's time per call is
then its median execution times its executions per call. Shares are of the sum (`op
ms`); `busy` = op ms / traced wall time (the rest: dispatch, waits); `ovlp` = summed
op durations / op ms (1.00 = no overlap). Control-flow ops (call, while) are skipped:
their nested ops have their own events.

An op is classified (`classify_instruction`, `classify_op`: pure functions) from the
optimized HLO (`compiled.as_text()`): the opcodes of the op and of what it fuses, their
jax `op_name` (flax module paths: 'attention', 'attention_norm', 'mlp', 'embeddings',
...; the einsum spec the product seam records, e.g. 'bhqd,bhkd->bhqk'; named scopes),
dot batch dimensions, and the innermost stack frame's file (work traced in the product
seam, research/models/{mixed_matmul,products,projections}.py or quantize.py, counts
with its product):
  proj   projection GEMMs (dots without batch dims: Q/K/V, attention output, FFN, head),
         forward and backward, with bias add/gradient and int8 (de)quantization
  attn   attention score and context products (dots with batch dims [b, h])
  smax   softmax with its scale and mask add, forward and backward
  LN     LayerNorm (with the residual add XLA fuses into it), forward and backward
  GELU   the FFN activation, forward and backward
  emb    embedding gathers, position/type adds, the tables' gradients (zero fill, scatter)
  opt    the optimizer update: the trainer's `tx.update` runs under
         `jax.named_scope('optimizer_update')` here; `apply_updates` fuses into it
  data   ops made only of transpose/copy/reshape/concatenate/pad/broadcast/convert/slice
  other  the rest: dropout and its random bits (also given alone: `other_dropout_ms`),
         the attention mask, unfused residual adds, pooling, loss, norms of the metrics
A fusion takes the class of its strongest member: dot > embedding gather > optimizer >
softmax > GELU > LayerNorm > other embedding ops > GEMM epilogue > other > data (a
broadcast of a scalar last: CSE may have given it any user's metadata). So what XLA
fuses into a product counts with it: XLA:CPU (YNNPACK) fuses the score product with the
scale, mask, max and exp of the softmax, which then count as 'attn' (smax keeps the sum,
division and backward); 'attn+smax' does not depend on such fusion choices. An unfused
eager profile, as the paper's PyTorch one, would split the same work differently.

Output: a table row per mode x dtype x batch x length (% per class, total ms, op ms,
busy, ovlp), a stacked-bar PNG (`--png`, default docs/op_profile.png; '' for none; needs
matplotlib), the paper's three findings computed from the shares, and last one JSON line.
"""
from __future__ import annotations

import argparse
import bisect
import glob
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from research.checkpoints import load_pretrained  # pylint: disable=wrong-import-position
from research.models import Encoder  # pylint: disable=wrong-import-position
from research.models.heads import TaskModel  # pylint: disable=wrong-import-position
from research.objectives import Classification  # pylint: disable=wrong-import-position
from research.train.optimizers import make_optimizer  # pylint: disable=wrong-import-position
from research.train.step import TaskLoss, init_state, make_train_step  # pylint: disable=wrong-import-position
from research.transforms import freeze, quantize  # pylint: disable=wrong-import-position

CLASSES = ('proj', 'attn', 'smax', 'LN', 'GELU', 'emb', 'opt', 'data', 'other')
GEMM = ('proj', 'attn')
OPTIMIZER_SCOPE = 'optimizer_update'
DROPOUT = 0.1

# -- Classification (pure functions of opcodes and op names) --------------------------

# Instructions that do no work of their own (ignored when classifying a fusion).
_TRIVIAL = {'parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast', 'iota',
            'after-all', 'partition-id', 'replica-id', 'opt-barrier', 'fusion'}
# Pure data movement.
_DATA = {'transpose', 'copy', 'reshape', 'concatenate', 'pad', 'broadcast', 'convert',
         'slice', 'dynamic-slice', 'dynamic-update-slice', 'copy-start', 'copy-done',
         'reverse', 'bitcast-convert'}
# Ops whose own event encloses the events of the thunks they run.
_CONTROL = {'while', 'conditional', 'call', 'async-start', 'async-done', 'async-update'}
_NORMS = {'attention_norm', 'output_norm', 'layer_norm', 'final_norm', 'LayerNorm',
          'layernorm'}
_PROJECTIONS = {'query', 'key', 'value', 'out', 'intermediate', 'output', 'pooler',
                'projection', 'dense', 'classifier', 'head', 'kernel'}
# Files of the product seam (research/models/): ops traced there belong to a product.
_SEAM_FILES = {'mixed_matmul.py', 'products.py', 'projections.py', 'quantize.py'}
_GEMM_TARGET = re.compile(r'gemm|matmul|cublas|\$dot', re.I)
_ATTENTION_TARGET = re.compile(r'fmha|flash|attention', re.I)
# Strength of each class when a fusion mixes several (higher wins).
_RANK = {'gemm': 9, 'emb_gather': 8, 'opt': 7, 'smax': 6, 'GELU': 5, 'LN': 4, 'emb': 3,
         'epilogue': 2, 'other': 1, 'data': 0}


def einsum_batched(spec: str) -> bool | None:
  """Whether an einsum spec 'ab,bc->ac' has batch indices (in both operands and the
  output); None if `spec` is not a two-operand einsum."""
  if '->' not in spec or spec.count(',') != 1:
    return None
  inputs, out = spec.split('->')
  lhs, rhs = inputs.split(',')
  return bool(set(lhs) & set(rhs) & set(out))


def is_dropout(op_name: str) -> bool:
  """Whether an op_name belongs to dropout or its random bits."""
  return any(s.lower().startswith('dropout') for s in op_name.split('/')[:-1]) or any(
      k in op_name for k in ('random_bits', 'threefry', 'rng_bit_generator'))


def _module(segment: str) -> str:
  """'layer_0.attention_block' -> 'layer_0'; 'transpose(jvp(Encoder))' stays."""
  return segment.split('.')[0] if '(' not in segment else segment


def classify_instruction(opcode: str, op_name: str = '', batched: bool | None = None,
                         target: str = '', scalar: bool = False, source: str = ''
                         ) -> tuple[str, int] | None:
  """(class, rank) of one HLO instruction; None for one that does no work.

  Args:
    opcode: the HLO opcode ('dot', 'fusion', 'exponential', 'custom-call', ...).
    op_name: its jax metadata op_name, e.g.
      'jit(f)/Encoder/layer_0.attention_block/layer_0._residual/attention/exp'.
    batched: for dots, whether they have batch dimensions (None = unknown: then the
      einsum spec in op_name decides).
    target: a custom-call's target (e.g. '__cublas$gemm').
    scalar: a broadcast of a scalar: its metadata may come from any user of an equal
      one (XLA's CSE), so its class ranks below every other member of a fusion.
    source: the file that traced it (innermost stack frame), e.g. 'mixed_matmul.py':
      element-wise work of the product seam (a bias add outside any projection's
      scope, as the fused QKV product's; (de)quantization) counts with its product.
  """
  if scalar:
    found = classify_instruction(opcode, op_name, batched, target, source=source)
    return None if found is None else (found[0], -1)
  segments = op_name.split('/') if op_name else []
  spec_batched = [b for b in map(einsum_batched, segments) if b is not None]
  if opcode in ('dot', 'convolution') or (opcode == 'custom-call' and
                                           _GEMM_TARGET.search(target)):
    if batched is None:
      batched = bool(spec_batched and spec_batched[-1])
    return ('attn' if batched else 'proj'), _RANK['gemm']
  if opcode == 'custom-call' and _ATTENTION_TARGET.search(target):
    return 'attn', _RANK['gemm']
  if opcode in _TRIVIAL:
    return None
  modules = [_module(s) for s in segments[:-1]]  # the last segment is the primitive
  if opcode in ('gather', 'scatter') and 'embeddings' in modules:
    return 'emb', _RANK['emb_gather']
  if any(m.endswith('_embeddings') for m in modules):  # a table's own ops (its gradient)
    return 'emb', _RANK['emb']
  if opcode in _DATA:
    return 'data', _RANK['data']
  if os.path.basename(source) in _SEAM_FILES:
    return ('attn' if spec_batched and spec_batched[-1] else 'proj'), _RANK['epilogue']
  if any(m.startswith(OPTIMIZER_SCOPE) for m in modules):
    return 'opt', _RANK['opt']
  if any(m in _NORMS for m in modules):
    return 'LN', _RANK['LN']
  if is_dropout(op_name):
    return 'other', _RANK['other']
  if 'embeddings' in modules:
    return 'emb', _RANK['emb']
  owners = [i for i, m in enumerate(modules) if m in ('attention', 'mlp')]
  if owners:
    owner = owners[-1]
    inner = modules[owner + 1:]
    if any(m in _PROJECTIONS for m in inner) or any(
        einsum_batched(m) is not None for m in inner):
      batched_inner = [b for b in map(einsum_batched, inner) if b is not None]
      return ('attn' if batched_inner and batched_inner[-1] else 'proj'), _RANK['epilogue']
    return ('smax' if modules[owner] == 'attention' else 'GELU'), _RANK[
        'smax' if modules[owner] == 'attention' else 'GELU']
  if spec_batched or any(m in _PROJECTIONS for m in modules):
    return ('attn' if spec_batched and spec_batched[-1] else 'proj'), _RANK['epilogue']
  return 'other', _RANK['other']


def classify_op(parts) -> str | None:
  """The class of one executed op (a thunk or kernel) from the instructions it runs.

  Args:
    parts: (opcode, op_name, batched, target, scalar, source) of the op and of every
      instruction it fuses (the members of a fusion's computation); see
      `classify_instruction`.
  Returns:
    One of CLASSES, or None for control flow (its nested ops are counted instead).
  """
  parts = list(parts)
  if parts and parts[0][0] in _CONTROL:
    return None
  best = None
  for part in parts:
    found = classify_instruction(*part)
    if found is not None and (best is None or found[1] > best[1]):
      best = found
  return best[0] if best else 'data'


# -- HLO text ---------------------------------------------------------------------------

class Instruction(NamedTuple):
  name: str
  opcode: str
  op_name: str
  batched: bool | None
  target: str
  calls: tuple[str, ...]
  scalar: bool = False  # a broadcast of a scalar
  frame: int = 0  # stack_frame_id (0 = none)


_HEADER = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s*[(\s].*\{\s*$')
_LINE = re.compile(r'^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$')
_CALLS = re.compile(r'\b(?:calls|called_computations)=(\{[^}]*\}|%?[\w.\-]+)')


def _split_type(rest: str) -> str:
  """The text after an instruction's result type."""
  if rest.startswith('('):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == '('
      depth -= ch == ')'
      if depth == 0:
        return rest[i + 1:]
  return rest.split(' ', 1)[1] if ' ' in rest else ''


def parse_hlo(text: str) -> tuple[str, dict[str, list[Instruction]], dict[str, Instruction]]:
  """(module name, computations by name, instructions by name) of an HLO module's text."""
  module = re.search(r'HloModule\s+([\w.\-]+)', text)
  computations: dict[str, list[Instruction]] = {}
  current = None
  for line in text.splitlines():
    if not line.startswith(' '):
      header = _HEADER.match(line)
      current = None
      if header and not line.startswith('HloModule'):
        current = computations.setdefault(header.group(1), [])
      continue
    found = _LINE.match(line)
    if current is None or not found:
      continue
    name, rest = found.groups()
    op = re.match(r'\s*([\w\-]+)\(', _split_type(rest.strip()))
    if not op:
      continue
    op_name = re.search(r'op_name="((?:[^"\\]|\\.)*)"', rest)
    batched = None
    if op.group(1) in ('dot', 'convolution'):
      batched = bool(re.search(r'lhs_batch_dims=\{\d', rest))
    elif op.group(1) == 'custom-call':
      dims = re.search(r'"lhs_batch_dimensions":\s*\[([^\]]*)\]', rest)
      batched = bool(dims.group(1).strip()) if dims else None
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    calls = []
    for group in _CALLS.findall(rest):
      calls += [c.strip().lstrip('%') for c in group.strip('{}').split(',') if c.strip()]
    scalar = op.group(1) == 'broadcast' and bool(re.search(r'\bdimensions=\{\}', rest))
    frame = re.search(r'\bstack_frame_id=(\d+)', rest)
    current.append(Instruction(name, op.group(1), op_name.group(1) if op_name else '',
                               batched, target.group(1) if target else '', tuple(calls),
                               scalar, int(frame.group(1)) if frame else 0))
  by_name = {i.name: i for instrs in computations.values() for i in instrs}
  return (module.group(1) if module else ''), computations, by_name


def source_files(text: str) -> dict[int, str]:
  """stack_frame_id -> the file of that (innermost) frame, from the tables at the end
  of an HLO module's text (FileNames, FileLocations, StackFrames)."""
  def table(title):
    found = re.search(rf'^{title}\n(.*?)(?:\n\s*\n|\Z)', text, re.S | re.M)
    rows = {}
    for line in (found.group(1).splitlines() if found else ()):
      key, _, value = line.strip().partition(' ')
      if key.isdigit():
        rows[int(key)] = value
    return rows

  files = {k: v.strip().strip('"') for k, v in table('FileNames').items()}
  locations = {}
  for k, v in table('FileLocations').items():
    found = re.search(r'file_name_id=(\d+)', v)
    if found:
      locations[k] = files.get(int(found.group(1)), '')
  frames = {}
  for k, v in table('StackFrames').items():
    found = re.search(r'file_location_id=(\d+)', v)
    if found:
      frames[k] = locations.get(int(found.group(1)), '')
  return frames


def op_class_table(text: str) -> tuple[str, dict[str, str | None], set[str]]:
  """(module name, class of every instruction an event may name, the names of the
  'other' ops that are dropout or its random bits) from HLO text."""
  module, computations, by_name = parse_hlo(text)
  frames = source_files(text)

  def members(instr, seen):
    yield (instr.opcode, instr.op_name, instr.batched, instr.target, instr.scalar,
           frames.get(instr.frame, ''))
    for called in instr.calls:
      if called in seen:
        continue
      seen.add(called)
      for inner in computations.get(called, ()):
        yield from members(inner, seen)

  classes, dropout = {}, set()
  for name, instr in by_name.items():
    parts = list(members(instr, set()))
    classes[name] = classify_op(parts)
    if classes[name] == 'other' and any(is_dropout(p[1]) for p in parts):
      dropout.add(name)
  return module, classes, dropout


# -- Profiler events --------------------------------------------------------------------

def _stats(event) -> dict:
  return {k: v for k, v in event.stats}


IDLE_GAP_NS = 50_000  # a thread idle this long between two ops was waiting


def async_finish(starts: list[float], ends: list[float], returned: float,
                 marker: float) -> float:
  """When an asynchronous XLA:CPU thunk finished (ns), from the thread that completed it.

  Args:
    starts, ends: the op events of the completing thread, sorted by start.
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


def attribute(spans: list[tuple[float, float]]) -> list[float]:
  """Each span's share of the time it covers: where k spans overlap, each gets 1/k.

  So ops that ran concurrently (XLA:CPU runs independent thunks on several threads;
  GPU streams) share the wall time they took together, and the shares add up to the
  time any op was running.
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


def op_times(xspace_path: str, module: str, classes: dict[str, str | None]):
  """Seconds per HLO op in a trace, over all its executions, with overlapping ops
  sharing their time (`attribute`). Returns (seconds by op, summed op durations without
  sharing, seconds of events matching no instruction, [(Execute call, used, to 'end:'
  marker) seconds of each asynchronous CPU op]).

  Device planes (GPU/TPU kernels) are used when present; otherwise the host's XLA:CPU
  thunk events; an asynchronous one ends where `async_finish` says.
  """
  asynchronous: list[tuple[float, float, float]] = []
  data = jax.profiler.ProfileData.from_file(xspace_path)
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith('/device:') and
            not p.name.startswith('/device:CUSTOM')]
  found: list[tuple[str, str, float, float, str]] = []  # op, event name, start, end, module

  def add(op, name, start, end, stats):
    found.append((op, name, start, end, str(stats.get('hlo_module', ''))))

  if device:
    for plane in device:
      lines = list(plane.lines)
      if any(line.name == 'XLA Ops' for line in lines):  # derived per-op line
        lines = [line for line in lines if line.name == 'XLA Ops']
      else:
        lines = [line for line in lines if line.name not in (
            'XLA Modules', 'Steps', 'Framework Name Scope', 'Framework Ops',
            'Source code', 'XLA TraceMe', 'Launch Stats', 'TensorFlow Name Scope')]
      for line in lines:
        for event in line.events:
          stats = _stats(event)
          op = str(stats.get('hlo_op', event.name))
          if 'hlo_op' in stats or op in classes:
            add(op, event.name, event.start_ns, event.end_ns, stats)
  else:
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


def profile(compiled, args, steps: int, warmup: int, carry=None) -> tuple[dict, list]:
  """Runs `compiled` untraced, then traced: (row figures, [(seconds, op, class)] costliest
  first). `carry(out, args)` gives the next call's arguments (a train step's state)."""
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


# -- The two workloads ------------------------------------------------------------------

def compile_options():
  return {'xla_cpu_enable_xprof_traceme': True} if jax.default_backend() == 'cpu' else {}


def random_batch(config, batch: int, length: int, seed: int = 0) -> dict:
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
  return fn.lower(*args).compile(compile_options()), args


def scoped(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` with its update traced under a named scope (so its ops can be told apart)."""
  def update(updates, state, params=None):
    with jax.named_scope(OPTIMIZER_SCOPE):
      return tx.update(updates, state, params)
  return optax.GradientTransformation(tx.init, update)


def training(config, encoder_params, batch: dict):
  """(compiled train step, args): the trainer's step, as benchmarks/finetune_cpu.py."""
  objective = Classification(num_labels=2, pooling='cls', head_dropout=DROPOUT)
  model = TaskModel(config, objective)
  params = model.init(jax.random.PRNGKey(0), batch['input_ids'][:1],
                      batch['attention_mask'][:1])['params']
  params = jax.device_put({**params, 'encoder': encoder_params})
  rules = freeze.preset('full')
  tx = scoped(freeze.with_freezing(make_optimizer({
      'learning_rate': 1e-4, 'total_steps': 1000, 'schedule': 'constant',
      'weight_decay': 0.01, 'clip_norm': 1.0}), params, rules))
  state = jax.jit(lambda s: s)(init_state(params, tx, seed=1))
  step = jax.jit(make_train_step(model, tx, [TaskLoss(objective)],
                                 labels=freeze.freeze_labels(params, rules)),
                 donate_argnums=0)
  args = (state, jax.device_put(batch))
  return step.lower(*args).compile(compile_options()), args


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


def findings(rows: list[dict]) -> tuple[list[str], dict]:
  """The paper's three findings, checked against the measured shares: (lines, figures)."""
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


def plot(rows: list[dict], path: str) -> str:
  """A stacked-bar PNG of the shares; returns a message."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return 'matplotlib is not installed: no PNG (the table and JSON hold the same figures)'
  panels: dict[tuple, list[dict]] = {}
  for row in rows:
    panels.setdefault((row['mode'], row['dtype']), []).append(row)
  modes = list(dict.fromkeys(r['mode'] for r in rows))
  dtypes = list(dict.fromkeys(r['dtype'] for r in rows))
  bars = max(map(len, panels.values()))
  fig, axes = plt.subplots(len(dtypes), len(modes), squeeze=False, sharey=True,
                           figsize=(max(7.5, len(modes) * (0.4 * bars + 1.8)),
                                    2.4 * len(dtypes) + 0.6))
  colors = plt.get_cmap('tab10').colors
  for (r, dtype), (c, mode) in ((x, y) for x in enumerate(dtypes) for y in enumerate(modes)):
    ax = axes[r, c]
    group = sorted(panels.get((mode, dtype), []), key=lambda g: (g['batch'], g['length']))
    if not group:
      ax.axis('off')
      continue
    x = np.arange(len(group))
    bottom = np.zeros(len(group))
    for i, cls in enumerate(CLASSES):
      values = np.array([g['shares'][cls] for g in group])
      ax.bar(x, values, bottom=bottom, color=colors[i % len(colors)], label=cls, width=0.8)
      bottom += values
    ax.set_xticks(x, [f'b{g["batch"]}\nL{g["length"]}' for g in group], fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_title(f'{mode}, {dtype}', fontsize=9)
    if c == 0:
      ax.set_ylabel('% of op time')
  handles, labels = next(ax for ax in axes.flat if ax.axison).get_legend_handles_labels()
  fig.legend(handles, labels, ncol=len(CLASSES), fontsize=7, loc='upper center')
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return f'wrote {path}'


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
  modes = args.modes.split(',')
  dtypes = args.dtypes.split(',')
  batches = [int(b) for b in args.batches.split(',')]
  lengths = [int(n) for n in args.lengths.split(',')]
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
          figures, top = profile(compiled, call_args, args.steps, args.warmup, carry)
          row = {'mode': mode, 'dtype': dtype, 'batch': batch, 'length': length,
                 **figures, 'setup_compile_s': setup_s}
          rows.append(row)
          print(table_line(row), flush=True)
          for seconds, op, cls in top[:args.show_ops]:
            print(f'      {seconds * 1e3:8.2f} ms  {cls or "-":<6} {op}', flush=True)
          del compiled, call_args
  print()
  print('Pati et al. findings against these measurements (shares of op time):')
  lines, summary = findings(rows)
  for line in lines:
    print(line)
  if args.png:
    print(plot(rows, args.png))
  print(json.dumps({'benchmark': 'op_profile', 'model': args.model,
                    'backend': jax.default_backend(), 'device': device.device_kind,
                    'cpus': os.cpu_count(), 'jax': jax.__version__, 'steps': args.steps,
                    'classes': list(CLASSES), 'rows': rows, 'findings': summary}))


if __name__ == '__main__':
  main()
