r"""What kind of work each op of a compiled XLA module does, from its optimized HLO.

    module, classes, dropout = op_class_table(jax.jit(f).lower(*args).compile().as_text())
    classes['fusion.3']  # -> 'attn'

An op (a thunk on CPU, a kernel on GPU/TPU) is classified (`classify_instruction`,
`classify_op`: pure functions) from the optimized HLO (`compiled.as_text()`): the
opcodes of the op and of what it fuses, their jax `op_name` (flax module paths:
'attention', 'attention_norm', 'mlp', 'embeddings', ...; the einsum spec the product
seam records, e.g. 'bhqd,bhkd->bhqk'; named scopes), dot batch dimensions, and the
innermost stack frame's file (work traced in the product seam,
research/models/{mixed_matmul,products,projections}.py or quantize.py, qat.py, lora.py, counts with its
product):
  proj   projection GEMMs (dots without batch dims: Q/K/V, attention output, FFN, head),
         forward and backward, with bias add/gradient and int8 (de)quantization
  attn   attention score and context products (dots with batch dims [b, h])
  smax   softmax with its scale and mask add, forward and backward
  LN     LayerNorm (with the residual add XLA fuses into it), forward and backward
  GELU   the FFN activation, forward and backward
  emb    embedding gathers, position/type adds, the tables' gradients (zero fill, scatter)
  opt    the optimizer update: ops traced under `jax.named_scope(OPTIMIZER_SCOPE)`
         (wrap the optimizer's `update` in it); `apply_updates` fuses into it
  data   ops made only of transpose/copy/reshape/concatenate/pad/broadcast/convert/slice
  other  the rest: dropout and its random bits (`is_dropout`), the attention mask,
         unfused residual adds, pooling, loss, norms of the metrics
A fusion takes the class of its strongest member: dot > embedding gather > optimizer >
softmax > GELU > LayerNorm > other embedding ops > GEMM epilogue > other > data (a
broadcast of a scalar last: CSE may have given it any user's metadata). So what XLA
fuses into a product counts with it: XLA:CPU (YNNPACK) fuses the score product with the
scale, mask, max and exp of the softmax, which then count as 'attn' (smax keeps the sum,
division and backward); 'attn+smax' does not depend on such fusion choices. An unfused
eager profile, as Pati et al.'s PyTorch one, would split the same work differently.
Control-flow ops (call, while, ...) have no class (None): their nested ops are counted.

`research.evaluate.op_profile` times these ops from profiler traces.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, NamedTuple

from research.models import mixed_matmul
from research.train.step import OPTIMIZER_SCOPE  # pylint: disable=unused-import

CLASSES = ('proj', 'attn', 'smax', 'LN', 'GELU', 'emb', 'opt', 'data', 'other')
GEMM = ('proj', 'attn')

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
_SEAM_FILES = {'mixed_matmul.py', 'products.py', 'projections.py', 'quantize.py', 'qat.py', 'lora.py'}
_GEMM_TARGET = re.compile(r'gemm|matmul|cublas|\$dot', re.I)
_ATTENTION_TARGET = re.compile(r'fmha|flash|attention', re.I)
# Strength of each class when a fusion mixes several (higher wins).
_RANK = {'gemm': 9, 'emb_gather': 8, 'opt': 7, 'smax': 6, 'GELU': 5, 'LN': 4, 'emb': 3,
         'epilogue': 2, 'other': 1, 'data': 0}

# -- Classification (pure functions of opcodes and op names) --------------------------


def einsum_batched(spec: str) -> bool | None:
  """Whether an einsum spec has batch indices (in both operands and the output).

  Args:
    spec: one segment of an op_name, e.g. 'bhqd,bhkd->bhqk'.
  Returns:
    True or False; None if `spec` is not a two-operand einsum.
  """
  if '->' not in spec or spec.count(',') != 1:
    return None
  lhs, rhs, out = mixed_matmul.parse_einsum(spec)
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
  Returns:
    (one of CLASSES, its rank among the members of a fusion), or None.
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


def classify_op(parts: Iterable[tuple]) -> str | None:
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
  """One instruction of an HLO module's text, as far as classification needs it."""
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
  """Reads the instructions of an HLO module's text.

  Args:
    text: an HLO module as text, e.g. `compiled.as_text()`.
  Returns:
    (module name, the instructions of each computation by its name, every instruction
    by its name).
  """
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
  """The file of each stack frame (its innermost one) of an HLO module's text.

  Args:
    text: an HLO module as text, with the tables XLA prints at its end (FileNames,
      FileLocations, StackFrames).
  Returns:
    {stack_frame_id: file path}; empty if the text has no such tables.
  """
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
  """The class of every op a profiler event may name, from a module's optimized HLO.

  Args:
    text: the optimized HLO of a compiled module (`compiled.as_text()`).
  Returns:
    (module name, {instruction name: one of CLASSES or None for control flow}, the
    names of the 'other' ops that are dropout or its random bits).
  """
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
