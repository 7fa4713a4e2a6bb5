"""precisions: one encoder at float32 / bf16 / int8, and fixed-shape batches."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from research.evaluate import precisions as prec
from research.evaluate.speed import cpu_flags
from research.models import EncoderConfig, init_params

CONFIG = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64)


class _Tokenizer:
  def __call__(self, texts, truncation, max_length):
    return {'input_ids': [[2] + [5 + len(w) for w in t.split()][:max_length - 2] + [3]
                          for t in texts]}


def test_fixed_batch_pads_cuts_and_cycles():
  b = prec.fixed_batch(_Tokenizer(), ['a bb', 'ccc ' * 20], batch=3, length=6)
  assert b['input_ids'].shape == (3, 6)
  np.testing.assert_array_equal(b['attention_mask'].sum(1), [4, 6, 4])
  with pytest.raises(ValueError, match='texts'):
    prec.fixed_batch(_Tokenizer(), [], batch=1, length=8)


def test_the_three_precisions_agree_with_float32():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  ids = np.random.default_rng(0).integers(1, 64, (4, 16)).astype(np.int32)
  batches = [{'input_ids': ids, 'attention_mask': np.ones_like(ids)}]
  models = prec.inference_precisions(CONFIG, params, batches)
  assert set(models) == set(prec.PRECISIONS)
  assert models['bfloat16'][1]['layer_0']['mlp']['intermediate']['kernel'].dtype == 'bfloat16'
  assert 'qkernel' in models['int8'][1]['layer_0']['mlp']['intermediate']
  outs = {k: np.asarray(prec.encoder_forward(c)(p, ids, np.ones_like(ids)), np.float32)
          for k, (c, p) in models.items()}
  for k in ('bfloat16', 'int8'):
    cos = (outs[k] * outs['float32']).sum(-1) / np.linalg.norm(outs[k], axis=-1) / \
        np.linalg.norm(outs['float32'], axis=-1)
    assert cos.min() > 0.98, (k, cos.min())
  with pytest.raises(ValueError, match='unknown precisions'):
    prec.inference_precisions(CONFIG, params, batches, precisions=('int4',))


def test_cpu_flags_names_the_kernel_features(tmp_path):
  info = tmp_path / 'cpuinfo'
  info.write_text('processor : 0\nflags : fpu sse avx2 fma avx512f avx512_vnni amx_int8\n')
  assert cpu_flags(str(info)) == ['avx2', 'fma', 'avx512f', 'avx512_vnni', 'amx_int8']
  info.write_text('processor : 0\nflags : fpu sse\n')
  assert cpu_flags(str(info))[0].startswith('none of')
  assert cpu_flags(str(tmp_path / 'missing'))  # other systems: the machine name
