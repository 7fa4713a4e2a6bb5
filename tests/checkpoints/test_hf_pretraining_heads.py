"""BERT's pre-training heads (cls.predictions, cls.seq_relationship) <-> MaskedLM / PreTraining:
load and export parity with transformers, and a fresh tied head for a bare encoder."""
from __future__ import annotations

import numpy as np
import pytest

from research.checkpoints import hf_heads
from research.objectives import MaskedLM, PreTraining


def _hf_pretraining_model():
  torch = pytest.importorskip('torch')
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37,
                                   max_position_embeddings=64, type_vocab_size=2)
  hf = transformers.BertForPreTraining(config)
  with torch.no_grad():  # random LayerNorms and biases, so a swapped tensor shows up
    for name, p in hf.named_parameters():
      if 'LayerNorm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  hf.set_attn_implementation('eager')
  return hf.eval()


def _hf_outputs(hf, ids, mask, types):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types))
  return out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()


def test_hf_bert_pretraining_heads_load_and_export_with_parity(tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  hf = _hf_pretraining_model()
  hf.save_pretrained(tmp_path / 'hf')
  model, params = hf_heads.load_pretraining_model(tmp_path / 'hf')
  assert model.objective == PreTraining(pair='nsp')
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 99, (2, 12))
  mask = np.ones((2, 12), np.int64)
  mask[1, 8:] = 0
  types = np.zeros((2, 12), np.int64)
  types[:, 6:] = 1
  mlm, nsp = _hf_outputs(hf, ids, mask, types)
  ours, _ = model.apply({'params': params}, ids, mask, types)
  real = mask > 0
  # Tolerance 1e-4 absolute (float32 on both sides).
  np.testing.assert_allclose(np.asarray(ours['mlm'])[real], mlm[real], atol=1e-4)
  np.testing.assert_allclose(ours['pair'], nsp, atol=1e-4)
  hf_heads.export_pretraining_model(model, params, tmp_path / 'out')
  back = transformers.BertForPreTraining.from_pretrained(tmp_path / 'out')
  back.set_attn_implementation('eager')
  mlm2, nsp2 = _hf_outputs(back.eval(), ids, mask, types)
  np.testing.assert_allclose(mlm2[real], np.asarray(ours['mlm'])[real], atol=1e-4)
  np.testing.assert_allclose(nsp2, ours['pair'], atol=1e-4)


def test_checkpoint_without_a_head_gets_a_fresh_tied_one(minilm_folder, caplog):
  caplog.set_level('INFO')
  model, params = hf_heads.load_pretraining_model(minilm_folder)
  assert model.objective == MaskedLM()
  assert 'no masked-LM head' in caplog.text
  vocab = model.encoder.vocab_size
  assert params['head']['bias'].shape == (vocab,)
  ids = np.asarray([[101, 7592, 103, 2088, 102]])
  logits, _ = model.apply({'params': params}, ids, np.ones_like(ids))
  assert logits.shape == (1, 5, vocab) and np.isfinite(np.asarray(logits)).all()
