"""XLA:CPU's compiler paths: named flag sets, compiling under one, and what it produced.

    compiled = compile_with(jax.jit(f).lower(*args), FLAG_SETS['onednn'])
    fusion_summary(compiled.as_text())   # {'kLoop': 31, '__ynn_fusion': 12, ...}

XLA:CPU decides per compilation which library runs each op: dots go to YNNPACK by
default (custom fusions named `__ynn_fusion`), elementwise work to XLA's own loop
fusions (kLoop / kInput / kOutput), and flags reroute work to oneDNN or XNNPACK or
change codegen. The flags are `DebugOptions` fields, and jax passes them per
compilation (`Lowered.compile(compiler_options=...)`), so one process can hold the same
function compiled under several flag sets and time them in alternated rounds
(`benchmarks/xla_cpu_paths.py`, whose measured map is in docs/results.md). A flag or
value XLA does not know is a `ValueError` naming it (XLA's own message is a runtime
error about "compile option").
"""
from __future__ import annotations

import collections
import re
from typing import Any, Mapping

# Every flag set the paths benchmark measures (the DebugOptions field names; enum values
# by their proto names, which is what per-compilation options take).
FLAG_SETS: dict[str, dict[str, Any]] = {
    'default': {},
    # oneDNN for matmul fusions (off by default), alone and with its fusion types.
    'onednn': {'xla_cpu_use_onednn': True},
    'onednn_dot': {'xla_cpu_use_onednn': True,
                   'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    'onednn_eltwise': {'xla_cpu_use_onednn': True,
                       'xla_cpu_experimental_onednn_fusion_type':
                           'LIBRARY_FUSION_TYPE_ELTWISE'},
    # YNNPACK taking more than single dots: dots with their epilogues, elementwise ops,
    # reductions.
    'ynn_dot': {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    'ynn_eltwise': {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_ELTWISE'},
    'ynn_reduce': {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'},
    # XNNPACK subgraphs (greedy extraction of compatible ops).
    'xnn_graph': {'xla_cpu_experimental_xnn_graph_fusion_mode':
                      'XNN_GRAPH_FUSION_MODE_GREEDY'},
    'xnn_dot': {'xla_cpu_experimental_xnn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    # No XNNPACK / YNNPACK at all: XLA's own dot emitter and Eigen.
    'no_xnnpack': {'xla_cpu_use_xnnpack': False},
    # Codegen of XLA's own fusions.
    'fast_math': {'xla_cpu_enable_fast_math': True},
    'vector_512': {'xla_cpu_prefer_vector_width': 512},
    'fast_math_512': {'xla_cpu_enable_fast_math': True, 'xla_cpu_prefer_vector_width': 512},
}


# Flags that change LLVM's code generation, not the HLO: two programs compiled under them
# print the same text and must each be timed.
CODEGEN_FLAGS = ('xla_cpu_enable_fast_math', 'xla_cpu_prefer_vector_width', 'xla_cpu_max_isa')


def changes_codegen(options: Mapping[str, Any]) -> bool:
  return any(flag in options for flag in CODEGEN_FLAGS)


def compile_with(lowered, options: Mapping[str, Any] | None = None):
  """`lowered.compile` under XLA `options`; an unknown flag or value names itself."""
  options = dict(options or {})
  try:
    return lowered.compile(compiler_options=options) if options else lowered.compile()
  except Exception as e:  # XLA raises its runtime error type for a bad option
    text = str(e)
    if 'compile option' not in text and 'While setting option' not in text:
      raise
    bad = re.search(r"(?:option:? '?)(\w+)", text)
    name = bad.group(1) if bad else '?'
    raise ValueError(f'XLA rejected the compiler option {name!r} in {options}: '
                     f'{text.splitlines()[0]} (the flags this XLA knows: '
                     'XLA_FLAGS=--help python -c "import jax; jax.numpy.ones(1)")') from None


def fusion_summary(hlo_text: str) -> dict[str, int]:
  """Counts of the work units in a compiled module's text: fusion kinds (kLoop, kInput,
  kOutput, kCustom), library calls (`__ynn_fusion`, oneDNN / XNNPACK targets) and
  top-level dots and convolutions left to XLA's own emitter."""
  counts: collections.Counter = collections.Counter()
  entry = hlo_text.split('ENTRY', 1)[-1]
  for line in hlo_text.splitlines():
    kind = re.search(r'\bfusion\(.*kind=(k\w+)', line)
    if kind:
      counts[kind.group(1)] += 1
    for target in re.findall(r'custom_call_target="([^"]+)"', line):
      counts[target] += 1
    for name in re.findall(r'"(__(?:ynn|xnn|onednn)\w*)"', line):
      counts[name] += 1
  for op in ('dot', 'convolution'):
    count = len(re.findall(rf'= \S+ {op}\(', entry))
    if count:
      counts[f'unfused {op}'] = count
  return dict(sorted(counts.items()))
