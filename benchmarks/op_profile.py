r"""Op-level cost profile of MiniLM inference and training, from profiler traces.

    python benchmarks/op_profile.py --quick                 # a small subset (minutes)
    python benchmarks/op_profile.py                         # full sweep (long on 2 cores)
    python benchmarks/op_profile.py --modes inference --dtypes float32,int8 \
        --batches 8 --lengths 64,512 --png docs/op_profile.png --show_ops 15

In the spirit of Pati et al., "Demystifying BERT: implications for accelerator design"
(IISWC 2021), whose findings were: projection GEMMs dominate at short sequence lengths;
the attention score/context products and softmax grow with sequence length; non-GEMM
ops take a large share of training time. The bundled MiniLM-L6 (`load_pretrained`) runs
(a) an inference forward pass (`Encoder.apply`, last hidden state) and (b) a full
training step (the trainer's own `make_train_step`: forward + backward + global-norm
clipping + AdamW, as benchmarks/finetune_cpu.py builds it, dropout 0.1), at sequence
lengths 64/128/256/512 and batches 1/8/32, in float32, bfloat16 (the encoder config's
`dtype`) and int8 (`quantize.calibrate` then `quantize.ptq`, as benchmarks/int8_cpu.py;
inference only; calibrated on random token ids, which sets scales, not speed). Inputs are
random token ids with a full attention mask.

How time is measured (the profiler, not FLOP counts). Each configuration is compiled
once (`jit(...).lower(...).compile()`), run `--warmup` times, timed untraced for the
wall time (`total ms`, median of `--steps` calls), then run `--steps` more times under
`jax.profiler.trace`. The XSpace it writes (`*.xplane.pb`) is read back with
`jax.profiler.ProfileData`, and every event that names an HLO instruction of the
compiled module (stat `hlo_op`, same `hlo_module`) is one op execution:
- XLA:CPU: its thunk executor emits one event per thunk only when the module is
  compiled with `xla_cpu_enable_xprof_traceme` (passed here as a compiler option of
  this benchmark's compile; nothing global). The event spans the thunk's `Execute`
  call; a thunk that finishes asynchronously (e.g. an Eigen dot on the intra-op pool)
  also emits an 'end: <op>' event linked to it by the producer/consumer context id.
  Such an op is taken to end at that event, or earlier at the first op that its
  completion callback started on the completing thread (the callbacks run last-in,
  first-out, so the executor's continuation runs before the 'end:' marker).
- GPU/TPU: the device planes' kernel events, each with its `hlo_op` (several kernels of
  one op add up); host-side events are then ignored. (Written for GPU, not yet run on
  one: if kernel events lack `hlo_op`, their names are matched against the HLO.)
Shares are of the summed op time ("op ms"); `cover` = op ms / traced wall time (under
100% on CPU: dispatch and waits between thunks; over 100% when ops overlap).

How an op is classified (`classify_instruction`, `classify_op`, pure functions below):
from the optimized HLO (`compiled.as_text()`), an op's class comes from its opcode and
those of the instructions it fuses, their jax `op_name` metadata (flax module paths
such as 'layer_0/attention/...', 'attention_norm', 'mlp', 'embeddings', plus the einsum
spec the product seam records, e.g. 'bhqd,bhkd->bhqk') and dot batch dimensions:
  proj   projection GEMMs (Q/K/V fused or not, attention output, FFN in/out, pooler,
         classifier; dots without batch dimensions, forward and backward), with the
         element-wise work XLA runs under their scope (bias add, int8 (de)quantization)
  attn   attention score and context products (dots with batch dimensions [b, h])
  smax   softmax with its scale and mask (element-wise and reductions in the attention
         module's own scope), forward and backward
  LN     LayerNorm (incl. the residual add fused with it), forward and backward
  GELU   the FFN activation, forward and backward
  emb    embedding gathers (and the scatter-add of their gradient), position/type adds
  opt    the optimizer update (AdamW, clipping): the benchmark runs the trainer's `tx`
         under `jax.named_scope('optimizer_update')`; `apply_updates` fuses into it
  data   transpose/copy/reshape/concatenate/pad/broadcast/convert/slice ops only
  other  the rest: dropout and its random bits, residual adds not fused into a
         LayerNorm, loss, pooling, the attention mask, gradient/param norms
A fusion takes the class of its strongest member, in the order: a dot (GEMM) >
embedding gather > optimizer > softmax > GELU > LayerNorm > embedding adds > GEMM
epilogue > other > data movement. So what XLA fuses into a product is counted with
the product: on XLA:CPU (YNNPACK) the score product is fused with the scale, mask, max
and exp of the softmax, which then count as 'attn' (the row's smax holds the rest of
the softmax: sum, division and the backward); 'attn+smax' is the robust figure.

Output: one table row per mode x dtype x batch x length (shares in %, total ms, op ms,
cover), a stacked-bar PNG (`--png`, default docs/op_profile.png; '' to skip), the
paper's three findings computed from the measured shares, and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import glob
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

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


def _module(segment: str) -> str:
  """'layer_0.attention_block' -> 'layer_0'; 'transpose(jvp(Encoder))' stays."""
  return segment.split('.')[0] if '(' not in segment else segment


def classify_instruction(opcode: str, op_name: str = '', batched: bool | None = None,
                         target: str = '') -> tuple[str, int] | None:
  """(class, rank) of one HLO instruction; None for one that does no work.

  Args:
    opcode: the HLO opcode ('dot', 'fusion', 'exponential', 'custom-call', ...).
    op_name: its jax metadata op_name, e.g.
      'jit(f)/Encoder/layer_0.attention_block/layer_0._residual/attention/exp'.
    batched: for dots, whether they have batch dimensions (None = unknown: then the
      einsum spec in op_name decides).
    target: a custom-call's target (e.g. '__cublas$gemm').
  """
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
  if opcode in _DATA:
    return 'data', _RANK['data']
  if any(m.startswith(OPTIMIZER_SCOPE) for m in modules):
    return 'opt', _RANK['opt']
  if any(m in _NORMS for m in modules):
    return 'LN', _RANK['LN']
  if any(m.lower().startswith('dropout') for m in modules) or any(
      k in op_name for k in ('random_bits', 'threefry', 'random_wrap', 'rng_bit')):
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
    parts: (opcode, op_name, batched, target) of the op and of every instruction it
      fuses (the members of a fusion's computation).
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

@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  op_name: str
  batched: bool | None
  target: str
  calls: tuple[str, ...]


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
    current.append(Instruction(name, op.group(1), op_name.group(1) if op_name else '',
                               batched, target.group(1) if target else '', tuple(calls)))
  by_name = {i.name: i for instrs in computations.values() for i in instrs}
  return (module.group(1) if module else ''), computations, by_name


def op_class_table(text: str) -> tuple[str, dict[str, str | None]]:
  """(module name, class of every instruction an event may name) from HLO text."""
  module, computations, by_name = parse_hlo(text)

  def members(instr, seen):
    yield (instr.opcode, instr.op_name, instr.batched, instr.target)
    for called in instr.calls:
      if called in seen:
        continue
      seen.add(called)
      for inner in computations.get(called, ()):
        yield from members(inner, seen)

  return module, {name: classify_op(members(instr, set())) for name, instr in by_name.items()}


# -- Profiler events --------------------------------------------------------------------

def _stats(event) -> dict:
  return {k: v for k, v in event.stats}


def op_times(xspace_path: str, module: str, known: set[str]) -> tuple[dict[str, float], float]:
  """Seconds per HLO op (summed over its executions) in a trace, and unmatched seconds.

  Device planes (GPU/TPU kernels) are used when present; otherwise the host's XLA:CPU
  thunk events, each ending at its linked 'end:' event or at the first op its
  completion callback started (see the module docstring).
  """
  data = jax.profiler.ProfileData.from_file(xspace_path)
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith('/device:') and
            not p.name.startswith('/device:CUSTOM')]
  totals: dict[str, float] = {}
  unmatched = 0.0

  def add(op, seconds, stats):
    nonlocal unmatched
    if stats.get('hlo_module', module) != module and op not in known:
      return
    if op in known:
      totals[op] = totals.get(op, 0.0) + seconds
    else:
      unmatched += seconds

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
          if 'hlo_op' in stats or op in known:
            add(op, event.duration_ns * 1e-9, stats)
    return totals, unmatched

  host = [p for p in planes if p.name == '/host:CPU']
  starts, ends, line_starts = [], {}, {}
  for plane in host:
    for index, line in enumerate(plane.lines):
      key = (plane.name, index)
      for event in line.events:
        stats = _stats(event)
        if event.name.startswith('end: ') and '_c' in stats:
          ends[stats['_c']] = (key, event.start_ns)
        elif 'hlo_op' in stats:
          starts.append((key, event.start_ns, event.end_ns, str(stats['hlo_op']),
                         stats.get('_p'), stats))
          line_starts.setdefault(key, []).append(event.start_ns)
  for values in line_starts.values():
    values.sort()
  for _, start, end, op, producer, stats in starts:
    finish = end
    if producer in ends and ends[producer][1] > end:
      key, marker = ends[producer]
      finish = marker
      times = line_starts.get(key, [])
      i = bisect.bisect_left(times, end)
      if i < len(times) and times[i] < marker:
        finish = times[i]
    add(op, (finish - start) * 1e-9, stats)
  return totals, unmatched


def profile(compiled, args, steps: int, warmup: int, carry=None):
  """Runs `compiled` untraced and traced; returns (wall s, traced wall s, seconds per op).

  `carry(out, args)` gives the next call's arguments (train steps donate their state).
  """
  module, classes = op_class_table(compiled.as_text())

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
      traced = run(steps)
    path, = glob.glob(os.path.join(folder, 'plugins', 'profile', '*', '*.xplane.pb'))
    per_op, unmatched = op_times(path, module, set(classes))
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  by_class = dict.fromkeys(CLASSES, 0.0)
  for op, seconds in per_op.items():
    cls = classes.get(op)
    if cls is not None:
      by_class[cls] += seconds / steps
  by_class['other'] += unmatched / steps
  top = sorted(((s / steps, op, classes.get(op)) for op, s in per_op.items()), reverse=True)
  return wall, statistics.median(traced), by_class, unmatched / steps, top


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
          f'{shares} {row["total_ms"]:9.1f} {row["op_ms"]:9.1f} {row["cover"]:5.0f}')


def table_header() -> str:
  return (f'{"mode":<9} {"dtype":<8} {"bat":>3} {"len":>4} '
          + ' '.join(f'{c:>5}' for c in CLASSES)
          + f' {"total ms":>9} {"op ms":>9} {"cover":>5}')


def findings(rows: list[dict]) -> tuple[list[str], dict]:
  """The paper's three findings, checked against the measured shares."""
  lines, out = [], {'projection_gemm_short_vs_long': [], 'attention_growth': [],
                    'non_gemm_share': []}
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row['mode'], row['dtype'], row['batch']), []).append(row)
  for (mode, dtype, batch), group in sorted(groups.items()):
    group.sort(key=lambda r: r['length'])
    short, long_ = group[0], group[-1]
    top = max(CLASSES, key=lambda c: short['shares'][c])
    entry = {'mode': mode, 'dtype': dtype, 'batch': batch, 'short': short['length'],
             'long': long_['length'], 'proj_short': short['shares']['proj'],
             'proj_long': long_['shares']['proj'], 'largest_class_short': top}
    out['projection_gemm_short_vs_long'].append(entry)
    attn = lambda r: r['shares']['attn'] + r['shares']['smax']
    out['attention_growth'].append({
        'mode': mode, 'dtype': dtype, 'batch': batch, 'short': short['length'],
        'long': long_['length'], 'attn_smax_short': attn(short), 'attn_smax_long': attn(long_),
        'smax_short': short['shares']['smax'], 'smax_long': long_['shares']['smax']})
    if len(group) > 1:
      lines.append(
          f'  {mode} {dtype} b{batch}: proj GEMM {short["shares"]["proj"]:.0f}% at len '
          f'{short["length"]} -> {long_["shares"]["proj"]:.0f}% at {long_["length"]} '
          f'(largest class at len {short["length"]}: {top}); attn+smax '
          f'{attn(short):.0f}% -> {attn(long_):.0f}% (smax {short["shares"]["smax"]:.0f}% -> '
          f'{long_["shares"]["smax"]:.0f}%)')
    else:
      lines.append(f'  {mode} {dtype} b{batch} len {short["length"]}: proj GEMM '
                   f'{short["shares"]["proj"]:.0f}% (largest: {top}), attn+smax '
                   f'{attn(short):.0f}% (one length: no trend)')
  verdict = []
  multi = [e for e in out['projection_gemm_short_vs_long'] if e['short'] != e['long']]
  if multi:
    dominant = sum(e['largest_class_short'] == 'proj' for e in multi)
    shrink = sum(e['proj_long'] < e['proj_short'] for e in multi)
    grow = sum(e['attn_smax_long'] > e['attn_smax_short'] for e in out['attention_growth']
               if e['short'] != e['long'])
    verdict.append(f'1. projection GEMMs the largest class at the shortest length in '
                   f'{dominant}/{len(multi)} groups; their share falls with length in '
                   f'{shrink}/{len(multi)}.')
    verdict.append(f'2. attention products + softmax share grows with length in '
                   f'{grow}/{len(multi)} groups.')
    out['summary'] = {'groups': len(multi), 'proj_largest_at_short': dominant,
                      'proj_share_falls': shrink, 'attn_smax_grows': grow}
  else:
    verdict.append('1./2. need at least two lengths per group (--lengths).')
  for mode in ('inference', 'training'):
    nongemm = [100.0 - r['shares']['proj'] - r['shares']['attn'] for r in rows
               if r['mode'] == mode]
    if nongemm:
      out['non_gemm_share'].append({'mode': mode, 'min': min(nongemm), 'max': max(nongemm),
                                    'mean': statistics.fmean(nongemm)})
  text = ', '.join(f'{e["mode"]} {e["min"]:.0f}-{e["max"]:.0f}% (mean {e["mean"]:.0f}%)'
                   for e in out['non_gemm_share'])
  verdict.append(f'3. non-GEMM share of op time: {text or "n/a"}.')
  return lines + verdict, out


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
  fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.45 * max(map(len, panels.values()))
                                                        + 3), 2.6 * len(panels)),
                           squeeze=False)
  colors = plt.get_cmap('tab10').colors
  for ax, ((mode, dtype), group) in zip(axes[:, 0], panels.items()):
    group.sort(key=lambda r: (r['batch'], r['length']))
    x = np.arange(len(group))
    bottom = np.zeros(len(group))
    for i, cls in enumerate(CLASSES):
      values = np.array([r['shares'][cls] for r in group])
      ax.bar(x, values, bottom=bottom, color=colors[i % len(colors)], label=cls, width=0.8)
      bottom += values
    ax.set_xticks(x, [f'b{r["batch"]}\nL{r["length"]}' for r in group], fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel('% of op time')
    ax.set_title(f'{mode}, {dtype}', fontsize=9)
  axes[0, 0].legend(ncol=len(CLASSES), fontsize=7, loc='lower center',
                    bbox_to_anchor=(0.5, 1.12))
  fig.tight_layout()
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
  print('shares in % of op time; total ms = untraced wall time per call (median); '
        'cover = op ms / traced wall', flush=True)
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
          compile_s = time.perf_counter() - t0
          wall, traced, by_class, unmatched, top = profile(
              compiled, call_args, args.steps, args.warmup, carry)
          op_total = sum(by_class.values())
          row = {'mode': mode, 'dtype': dtype, 'batch': batch, 'length': length,
                 'total_ms': wall * 1e3, 'traced_ms': traced * 1e3, 'op_ms': op_total * 1e3,
                 'cover': 100.0 * op_total / traced if traced else 0.0,
                 'unmatched_ms': unmatched * 1e3, 'compile_s': compile_s,
                 'shares': {c: 100.0 * by_class[c] / op_total if op_total else 0.0
                            for c in CLASSES},
                 'ms': {c: by_class[c] * 1e3 for c in CLASSES}}
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
