"""GPT-2 checkpoints: load/export parity with transformers' GPT2LMHeadModel (float32, CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from research.checkpoints import export_pretrained, load_pretrained  # pylint: disable=g-import-not-at-top
from research.checkpoints import hf_names  # pylint: disable=g-import-not-at-top
from research.models import Encoder  # pylint: disable=g-import-not-at-top

TOL = 1e-4  # absolute, float32: hidden states and LM logits


def make_gpt2(**overrides):
  """A tiny random GPT2LMHeadModel with random LayerNorm and bias values."""
  torch.manual_seed(0)
  config = transformers.GPT2Config(**{
      'vocab_size': 99, 'n_positions': 32, 'n_embd': 32, 'n_layer': 2, 'n_head': 4,
      'n_inner': 48, 'bos_token_id': 98, 'eos_token_id': 98, **overrides})
  model = transformers.GPT2LMHeadModel(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if '.ln_' in name or name.endswith('bias'):  # so a swapped tensor shows up
        p.add_(0.1 * torch.randn_like(p))
  model.set_attn_implementation('eager')
  return model.eval()


def ours(config, params, ids, mask, position_ids=None):
  """(last hidden state, hidden states, tied LM logits) of our encoder."""
  def run(module):
    out, inter = module(ids, mask, position_ids=position_ids)
    return out, inter['hidden_states'], module.attend(out)
  return Encoder(config).apply({'params': params}, method=run)


def reference(model, ids, mask, position_ids=None):
  kwargs = {'input_ids': torch.from_numpy(np.asarray(ids, np.int64)),
            'attention_mask': torch.from_numpy(np.asarray(mask, np.int64)),
            'output_hidden_states': True}
  if position_ids is not None:
    kwargs['position_ids'] = torch.from_numpy(np.asarray(position_ids, np.int64))
  with torch.no_grad():
    return model(**kwargs)


def assert_close(ours_out, ref, mask):
  """Every hidden state and the logits within TOL at real tokens."""
  _, hidden, logits = ours_out
  real = mask.astype(bool)[..., None]
  assert len(hidden) == len(ref.hidden_states)
  for i, (a, b) in enumerate(zip(hidden, ref.hidden_states)):
    diff = np.abs(np.where(real, np.asarray(a) - b.numpy(), 0.0)).max()
    assert diff < TOL, f'hidden state {i}: max abs diff {diff:.2e}'
  diff = np.abs(np.where(real, np.asarray(logits) - ref.logits.numpy(), 0.0)).max()
  assert diff < TOL, f'logits: max abs diff {diff:.2e}'


@pytest.fixture(scope='module')
def gpt2_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp('gpt2')
  model = make_gpt2()
  model.save_pretrained(folder)
  return folder, model


def test_config_maps_to_decoder(gpt2_folder):
  config, params = load_pretrained(str(gpt2_folder[0]))
  assert config.model_type == 'gpt2'
  assert (config.norm_position, config.embedding_norm, config.causal) == ('pre', False, True)
  assert (config.type_vocab_size, config.use_pooler) == (0, False)
  assert config.hidden_act == 'gelu_tanh' and config.layer_norm_eps == 1e-5
  assert config.max_position_embeddings == 32 and config.intermediate_size == 48
  assert config.pad_token_id == 98  # eos stands in for GPT-2's missing pad token
  assert 'final_norm' in params and 'pooler' not in params


def test_right_padded_batch_matches_transformers(gpt2_folder, rng):
  config, params = load_pretrained(str(gpt2_folder[0]))
  ids = rng.integers(0, 99, (3, 12))
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  mask[2, 3:] = 0
  assert_close(ours(config, params, ids, mask), reference(gpt2_folder[1], ids, mask), mask)


def test_left_padded_batch_with_position_ids_matches_transformers(gpt2_folder, rng):
  # Left padding: positions count from each row's first real token (as transformers'
  # generate computes them), so both sides get the same explicit position_ids.
  config, params = load_pretrained(str(gpt2_folder[0]))
  ids = rng.integers(0, 99, (2, 10))
  mask = np.ones_like(ids)
  mask[1, :4] = 0
  position_ids = np.maximum(np.cumsum(mask, 1) - 1, 0)
  got = ours(config, params, ids, mask, position_ids)
  assert_close(got, reference(gpt2_folder[1], ids, mask, position_ids), mask)
  # Row 1's real tokens give what they give unpadded.
  alone = ours(config, params, ids[1:, 4:], mask[1:, 4:])
  np.testing.assert_allclose(np.asarray(got[2])[1, 4:], np.asarray(alone[2])[0], atol=TOL)


def test_export_round_trip(gpt2_folder, tmp_path, rng):
  config, params = load_pretrained(str(gpt2_folder[0]))
  export_pretrained(config, params, tmp_path)
  assert json.loads((tmp_path / 'config.json').read_text())['architectures'] == [
      'GPT2LMHeadModel']
  reloaded, info = transformers.GPT2LMHeadModel.from_pretrained(
      str(tmp_path), output_loading_info=True, attn_implementation='eager')
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'], info
  ids = rng.integers(0, 99, (2, 9))
  mask = np.ones_like(ids)
  ref = reference(reloaded.eval(), ids, mask)
  assert_close(ours(config, params, ids, mask), ref, mask)
  np.testing.assert_allclose(ref.logits.numpy(), reference(gpt2_folder[1], ids, mask).logits,
                             atol=1e-5)
  _, again = load_pretrained(str(tmp_path))
  flat, flat_again = (traverse_util.flatten_dict(t, sep='/') for t in (params, again))
  assert flat.keys() == flat_again.keys()
  for key in flat:
    np.testing.assert_array_equal(flat[key], flat_again[key], err_msg=key)


def test_unsupported_variants_are_refused():
  base = transformers.GPT2Config(vocab_size=99, n_positions=32, n_embd=32, n_layer=2,
                                 n_head=4).to_dict()
  for change, message in (({'scale_attn_by_inverse_layer_idx': True}, 'inverse_layer_idx'),
                          ({'add_cross_attention': True}, 'cross-attention'),
                          ({'n_head': 5}, 'divisible')):
    with pytest.raises(ValueError, match=message):
      hf_names.config_from_hf({**base, **change})


def test_fused_qkv_split_and_join_are_inverse():
  config = hf_names.gpt2_config(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2,
                                intermediate_size=16, max_position_embeddings=8)
  c_attn = np.arange(8 * 24, dtype=np.float32).reshape(8, 24)
  parts = [hf_names.to_ours(kind, c_attn, (8, 2, 4)) for kind in ('fused_q', 'fused_k',
                                                                  'fused_v')]
  np.testing.assert_array_equal(parts[1].reshape(8, 8), c_attn[:, 8:16])
  joined = np.concatenate([hf_names.to_hf(k, p) for k, p in zip(
      ('fused_q', 'fused_k', 'fused_v'), parts)], -1)
  np.testing.assert_array_equal(joined, c_attn)
  assert hf_names.hf_shape('fused_v', (8, 2, 4)) == (8, 24)
  assert {e.hf for e in hf_names.tensor_map(config)} >= {'h.0.attn.c_attn.weight', 'ln_f.bias'}


def test_causal_lm_task_model_exports_as_lm_head_model(gpt2_folder, tmp_path, rng):
  """A causal-LM run (TaskModel + CausalLM) exports as GPT2LMHeadModel, logits equal."""
  from research.checkpoints import hf_heads  # pylint: disable=g-import-not-at-top
  from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
  from research.objectives import CausalLM  # pylint: disable=g-import-not-at-top
  config, params = load_pretrained(str(gpt2_folder[0]))
  model = TaskModel(config, CausalLM())
  hf_heads.export_task_model(model, {'encoder': params}, tmp_path)
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(
      str(tmp_path), attn_implementation='eager').eval()
  ids = rng.integers(0, 99, (2, 7))
  mask = np.ones_like(ids)
  logits, _ = model.apply({'params': {'encoder': params}}, ids, mask)
  np.testing.assert_allclose(np.asarray(logits), reference(reloaded, ids, mask).logits.numpy(),
                             atol=TOL)


def test_masked_lm_task_model_export_is_refused_clearly(gpt2_folder):
  from research.checkpoints import hf_heads  # pylint: disable=g-import-not-at-top
  from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
  from research.objectives import MaskedLM  # pylint: disable=g-import-not-at-top
  from research.models.config import EncoderConfig  # pylint: disable=g-import-not-at-top
  config = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32)
  with pytest.raises(ValueError, match='export_pretraining_model'):
    hf_heads.task_tensors(TaskModel(config, MaskedLM()), {'encoder': {}, 'head': {}})
