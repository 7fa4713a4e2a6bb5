"""xla_cpu: flag sets compile, rejected flags name themselves, work units are counted."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import xla_cpu


def _lowered():
  a, b = jnp.ones((16, 32)), jnp.ones((32, 8))
  return jax.jit(lambda x, y: jax.nn.relu(x @ y).sum(-1)).lower(a, b), (a, b)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU flags')
def test_every_flag_set_compiles():
  """Compiling is safe for every set (running some oneDNN fusion types aborts the
  process, which the benchmark probes in a child process)."""
  lowered, _ = _lowered()
  for name, options in xla_cpu.FLAG_SETS.items():
    assert xla_cpu.compile_with(lowered, options) is not None, name


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU flags')
def test_a_rejected_flag_or_value_is_named():
  lowered, _ = _lowered()
  with pytest.raises(ValueError, match="'xla_cpu_no_such_flag'"):
    xla_cpu.compile_with(lowered, {'xla_cpu_no_such_flag': True})
  with pytest.raises(ValueError, match='xla_cpu_experimental_ynn_fusion_type'):
    xla_cpu.compile_with(lowered, {'xla_cpu_experimental_ynn_fusion_type': 'dot'})


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU flags')
def test_flag_sets_compute_the_same_function():
  lowered, args = _lowered()
  want = np.asarray(lowered.compile()(*args))
  for name in ('ynn_dot', 'no_xnnpack', 'fast_math'):
    got = xla_cpu.compile_with(lowered, xla_cpu.FLAG_SETS[name])(*args)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, err_msg=name)


def test_fusion_summary_counts_kinds_and_library_calls():
  text = '\n'.join([
      '%fusion.1 = f32[4]{0} fusion(f32[4]{0} %p), kind=kLoop, calls=%fused_computation',
      '%ynn = f32[4,4]{1,0} fusion(%a, %b), kind=kCustom, calls=%c, '
      'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}',
      'ENTRY %main {',
      '  %dot.3 = f32[4,4]{1,0} dot(f32[4,4]{1,0} %a, f32[4,4]{1,0} %b)',
      '  %cc = f32[4] custom-call(%a), custom_call_target="__onednn$matmul"',
      '}'])
  assert xla_cpu.fusion_summary(text) == {
      '__onednn$matmul': 1, '__ynn_fusion': 1, 'kCustom': 1, 'kLoop': 1, 'unfused dot': 1}
