"""Blocked attention: the same encoder outputs, used only where it is exact and asked."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from research.models import Encoder, EncoderConfig, blocked_attention, init_params
from research.models import hooks, products

CONFIG = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(name='inputs')
def _inputs():
  ids = np.random.default_rng(0).integers(1, 64, (3, 40)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 30:] = 0
  mask[2, 5:] = 0
  return ids, mask


def _forward(config, params, ids, mask, **kw):
  return jax.jit(lambda p, i, m: Encoder(config).apply({'params': p}, i, m, **kw))(
      params, ids, mask)


def _uses_blocks(config, params, ids, mask, **kw) -> bool:
  """Whether tracing the encoder goes through `blocked_attention.attend`."""
  calls = []
  attend = blocked_attention.attend
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(blocked_attention, 'attend', lambda *a, **k: calls.append(1) or attend(*a, **k))
    jax.eval_shape(lambda p: Encoder(config).apply({'params': p}, ids, mask, **kw), params)
  return bool(calls)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_blocks_give_the_same_outputs(inputs, monkeypatch, dtype):
  """12 (batch, head) pairs in blocks of 5 (the last one short) against the whole chain."""
  ids, mask = inputs
  config = CONFIG.replace(dtype=dtype)
  params = init_params(config, jax.random.PRNGKey(0))
  monkeypatch.setenv('RESEARCH_ATTENTION_BLOCKS', 'off')
  assert not _uses_blocks(config, params, ids, mask)
  whole = np.asarray(_forward(config, params, ids, mask)[0], np.float32)
  monkeypatch.setenv('RESEARCH_ATTENTION_BLOCKS', '0.001')  # ~1 KiB: always block
  monkeypatch.setattr(blocked_attention, 'BLOCK_BYTES', 40 * 40 * 4 * 5)
  assert _uses_blocks(config, params, ids, mask)
  blocked = np.asarray(_forward(config, params, ids, mask)[0], np.float32)
  real = mask > 0
  np.testing.assert_allclose(blocked[real], whole[real], atol=1e-5 if dtype == 'float32'
                             else 2e-2)


def test_attend_matches_the_softmax_formula():
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(2, 3, 7, 4)).astype(np.float32) for _ in range(3))
  k, v = k[:, :, :5], v[:, :, :5]
  bias = np.zeros((2, 1, 1, 5), np.float32)
  bias[1, ..., 3:] = np.finfo(np.float32).min
  scores = np.einsum('bhqd,bhkd->bhqk', q, k) * 0.5 + bias
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  want = np.einsum('bhqk,bhkd->bhqd', probs / probs.sum(-1, keepdims=True), v)
  got = blocked_attention.attend(q, k, v, bias, scale=0.5, dtype=np.float32)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_not_used_where_it_would_change_the_model(inputs, monkeypatch):
  """Attention probabilities asked for, dropout active, a hook or product on the chain:
  the whole chain runs (a fake-quant hook must see whole tensors)."""
  ids, mask = inputs
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  monkeypatch.setenv('RESEARCH_ATTENTION_BLOCKS', '0.001')
  hooks.register('test_twice', lambda arg: lambda x: 2 * x)
  products.register('test_plain', lambda arg: products.default)
  for config in (CONFIG.replace(hooks=(('.*/softmax_in', 'test_twice'),)),
                 CONFIG.replace(products=(('.*/attention/scores', 'test_plain'),))):
    assert not _uses_blocks(config, params, ids, mask), config
  _, inter = _forward(CONFIG, params, ids, mask, output_attentions=True)
  assert inter['attentions'][0].shape == (3, 4, 40, 40)
  assert not _uses_blocks(CONFIG, params, ids, mask, output_attentions=True)
  assert not _uses_blocks(CONFIG.replace(causal=True), params, ids, mask)
  assert not _uses_blocks(CONFIG, params, ids, mask, deterministic=False,
                          rngs={'dropout': jax.random.PRNGKey(0)})
  assert _uses_blocks(CONFIG.replace(attention_dropout=0.0), params, ids, mask,
                      deterministic=False, rngs={'dropout': jax.random.PRNGKey(0)})


def test_the_switch(monkeypatch):
  monkeypatch.setenv('RESEARCH_ATTENTION_BLOCKS', 'off')
  assert blocked_attention.threshold_bytes() is None
  assert not blocked_attention.use_blocks((64, 12, 512, 32), (64, 12, 512, 32))
  monkeypatch.setenv('RESEARCH_ATTENTION_BLOCKS', '2')
  assert blocked_attention.threshold_bytes() == 2 << 20
  monkeypatch.delenv('RESEARCH_ATTENTION_BLOCKS')
  assert blocked_attention.threshold_bytes() >= 1 << 20  # the cache's size, or 32 MiB
  assert blocked_attention.use_blocks((64, 12, 512, 32), (64, 12, 512, 32))  # 800 MB
  assert not blocked_attention.use_blocks((1, 12, 16, 32), (1, 12, 16, 32))
  monkeypatch.setenv('RESEARCH_ATTENTION_BLOCKS', 'sometimes')
  with pytest.raises(ValueError, match='RESEARCH_ATTENTION_BLOCKS'):
    blocked_attention.threshold_bytes()
