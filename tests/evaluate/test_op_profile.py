"""research/evaluate/hlo_ops.py and op_profile.py: op classification from hand-made HLO
op names, the HLO text parser on a tiny compiled function, the async-thunk end rule,
time sharing of overlapping ops and the findings summary (no profiling)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from research.evaluate import hlo_ops, op_profile, plots

LAYER = 'jit(f)/Encoder/layer_0.attention_block/layer_0._residual'
FFN = 'jit(f)/Encoder/layer_0.ffn_block/layer_0._residual'
BACKWARD = 'jit(step)/transpose(jvp(TaskModel))/encoder'


def part(opcode, op_name='', batched=None, target='', scalar=False, source=''):
  return (opcode, op_name, batched, target, scalar, source)


@pytest.mark.parametrize('parts, expected', [
    # Products: batch dimensions tell attention from projections (HLO dims, else spec).
    ([part('dot', f'{LAYER}/attention/bhqd,bhkd->bhqk/dot_general', True),
      part('exponential', f'{LAYER}/attention/exp')], 'attn'),  # score product + softmax
    ([part('dot', f'{LAYER}/attention/bhqk,bhkd->bhqd/dot_general')], 'attn'),
    ([part('dot', f'{LAYER}/attention/out/bhqd,hde->bqe/dot_general', False)], 'proj'),
    ([part('custom-call', f'{LAYER}/attention/bsi,io->bso/dot_general', False,
           '__cublas$gemm')], 'proj'),
    # The fused QKV bias add sits in the attention scope but was traced in the seam.
    ([part('add', f'{LAYER}/attention/add', source='/x/research/models/mixed_matmul.py'),
      part('transpose', f'{LAYER}/attention/transpose'),
      part('slice', f'{LAYER}/attention/split')], 'proj'),
    ([part('reduce', f'{LAYER}/attention/reduce_sum'),
      part('divide', f'{LAYER}/attention/div')], 'smax'),
    ([part('multiply', f'{BACKWARD}/layer_0.attention_block/layer_0._residual/attention/mul'),
      part('select', f'{LAYER}/attention/Dropout_0/jit(_where)/select_n')], 'smax'),
    ([part('add', f'{LAYER}/add'), part('rsqrt', f'{LAYER}/attention_norm/rsqrt')], 'LN'),
    ([part('add', f'{FFN}/mlp/intermediate/add', source='mixed_matmul.py'),
      part('erf', f'{FFN}/mlp/erf'), part('multiply', f'{FFN}/mlp/mul')], 'GELU'),
    ([part('gather', 'jit(f)/Encoder/embeddings/word_embeddings/jit(_take)/gather'),
      part('add', 'jit(f)/Encoder/embeddings/add')], 'emb'),
    ([part('broadcast', f'{BACKWARD}/embeddings/word_embeddings/jit(_take)/broadcast_in_dim',
           scalar=True)], 'emb'),  # the table gradient's zero fill
    ([part('multiply', 'jit(step)/optimizer_update/mul'), part('add', 'jit(step)/add')],
     'opt'),
    ([part('transpose', f'{LAYER}/attention/transpose'), part('copy')], 'data'),
    ([part('convert', f'{FFN}/mlp/output/convert_element_type')], 'data'),
    ([part('compare', f'{LAYER}/dropout/ge')], 'other'),
    # A CSE'd scalar broadcast keeps some other user's metadata: it must not decide.
    ([part('broadcast', 'jit(f)/Encoder/embeddings/word_embeddings/jit(_take)/lt',
           scalar=True),
      part('compare', 'jit(f)/Encoder/gt'),
      part('select', 'jit(f)/Encoder/jit(_where)/select_n')], 'other'),
    ([part('while', 'jit(step)/while'), part('add', 'jit(step)/add')], None),
])
def test_classify_op(parts, expected):
  assert hlo_ops.classify_op(parts) == expected


def test_einsum_batched():
  assert hlo_ops.einsum_batched('bhqd,bhkd->bhqk') is True
  assert hlo_ops.einsum_batched('bsi,io->bso') is False
  assert hlo_ops.einsum_batched('dot_general') is None


def test_hlo_of_a_compiled_function_is_classified():
  def f(x, w, q, k):
    with jax.named_scope('attention_norm'):
      x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)
    return x @ w, jnp.einsum('bhqd,bhkd->bhqk', q, k)

  args = (jnp.ones((16, 32)), jnp.ones((32, 48)), jnp.ones((2, 3, 8, 4)),
          jnp.ones((2, 3, 8, 4)))
  text = jax.jit(f).lower(*args).compile().as_text()
  module, classes, dropout = hlo_ops.op_class_table(text)
  assert module and not dropout
  found = {c for c in classes.values() if c not in (None, 'data')}
  assert {'proj', 'attn', 'LN'} <= found, classes


def test_source_files_reads_the_stack_frame_tables():
  text = ('HloModule m\n\nFileNames\n1 "/a/encoder.py"\n2 "/a/mixed_matmul.py"\n\n'
          'FunctionNames\n1 "f"\n\nFileLocations\n'
          '1 {file_name_id=1 function_name_id=1 line=3 end_line=3 column=1 end_column=2}\n'
          '2 {file_name_id=2 function_name_id=1 line=9 end_line=9 column=1 end_column=2}\n\n'
          'StackFrames\n1 {file_location_id=1 parent_frame_id=1}\n'
          '2 {file_location_id=2 parent_frame_id=1}\n')
  assert hlo_ops.source_files(text) == {1: '/a/encoder.py', 2: '/a/mixed_matmul.py'}


def test_async_thunk_ends_where_its_continuation_began():
  us = 1000
  # The completing thread ran two short ops right after the call returned (at 100 us),
  # sat idle, then ran the continuation (500..800 us); the 'end:' marker came at 801 us.
  starts = [101 * us, 104 * us, 500 * us, 790 * us]
  ends = [103 * us, 106 * us, 789 * us, 800 * us]
  assert op_profile.async_finish(starts, ends, 100 * us, 801 * us) == 500 * us
  # No op between the return and the marker: the marker is the end.
  assert op_profile.async_finish(starts, ends, 810 * us, 900 * us) == 900 * us


def test_findings_count_groups():
  def row(length, proj, attn, smax):
    shares = dict.fromkeys(hlo_ops.CLASSES, 0.0)
    shares.update(proj=proj, attn=attn, smax=smax, other=100.0 - proj - attn - smax)
    return {'mode': 'inference', 'dtype': 'float32', 'batch': 1, 'length': length,
            'shares': shares, 'op_ms': 1.0, 'other_dropout_ms': 0.0}

  lines, out = op_profile.findings([row(64, 70.0, 5.0, 2.0), row(512, 40.0, 30.0, 10.0)])
  assert out['proj_largest_at_short'] == out['proj_share_falls'] == 1
  assert out['attn_smax_grows'] == 1
  assert out['non_gemm_inference']['max'] == pytest.approx(30.0)
  assert lines[-1].startswith('3. non-GEMM share')


def test_overlapping_ops_share_their_time():
  # a alone 0..1, a and b together 1..3, b alone 3..4: a = 1 + 1, b = 1 + 1.
  assert op_profile.attribute([(0.0, 3.0), (1.0, 4.0)]) == pytest.approx([2.0, 2.0])
  assert op_profile.attribute([(0.0, 1.0), (2.0, 3.0)]) == pytest.approx([1.0, 1.0])


def test_op_class_shares_plot(tmp_path):
  pytest.importorskip('matplotlib')
  shares = dict.fromkeys(hlo_ops.CLASSES, 100.0 / len(hlo_ops.CLASSES))
  rows = [{'mode': 'inference', 'dtype': 'float32', 'batch': 1, 'length': n,
           'shares': shares} for n in (64, 128)]
  out = plots.op_class_shares(rows, tmp_path / 'figures' / 'op_profile.png')
  assert out == str(tmp_path / 'figures' / 'op_profile.png')
  assert (tmp_path / 'figures' / 'op_profile.png').stat().st_size > 0
