"""Pre-training heads <-> MaskedLM / PreTraining for BERT (cls.predictions,
cls.seq_relationship), ALBERT (predictions, sop_classifier; factorised width), RoBERTa
(lm_head) and DistilBERT (vocab_*): load and export parity with transformers, fresh tied
heads for bare encoders, and clear errors for what has no Hugging Face layout."""
from __future__ import annotations

import numpy as np
import pytest

from research.checkpoints import hf_heads
from research.models.heads import TaskModel
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


# -- ALBERT, RoBERTa and DistilBERT ------------------------------------------------------
_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=66)


def _hf_model(family: str, head: str):
  """A tiny random transformers model with random LayerNorms and biases, in eval mode."""
  torch = pytest.importorskip('torch')
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(1)
  if family == 'DistilBert':
    config = transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4,
                                           hidden_dim=37, max_position_embeddings=64)
  elif family == 'Roberta':  # relu encoder: the lm_head's GELU must not follow it
    config = transformers.RobertaConfig(**_TINY, pad_token_id=1, hidden_act='relu')
  elif family == 'Albert':  # factorised: the MLM dense maps 32 -> 16
    config = transformers.AlbertConfig(**_TINY, embedding_size=16)
  else:
    config = transformers.BertConfig(**_TINY)
  hf = getattr(transformers, f'{family}{head}')(config)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if 'norm' in name.lower() or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  hf.set_attn_implementation('eager')
  return hf.eval()


def _batch(family: str):
  rng = np.random.default_rng(0)
  pad = 1 if family == 'Roberta' else 0
  mask = np.ones((2, 12), np.int64)
  mask[1, 8:] = 0
  batch = {'input_ids': np.where(mask > 0, rng.integers(3, 99, (2, 12)), pad),
           'attention_mask': mask}
  if family in ('Albert', 'Bert'):
    batch['token_type_ids'] = np.repeat([[0] * 6 + [1] * 6], 2, 0)
  return batch


def _theirs(hf, batch):
  """(MLM logits, pair logits or None) of a transformers model."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    out = hf(**{k: torch.tensor(v) for k, v in batch.items()})
  mlm = getattr(out, 'prediction_logits', None)
  mlm = out.logits if mlm is None else mlm
  pair = getattr(out, 'sop_logits', None)
  return mlm.numpy(), None if pair is None else pair.numpy()


@pytest.mark.parametrize('family,head,pair', [
    ('Albert', 'ForPreTraining', 'sop'), ('Albert', 'ForMaskedLM', ''),
    ('Roberta', 'ForMaskedLM', ''), ('DistilBert', 'ForMaskedLM', ''),
    ('Bert', 'ForMaskedLM', '')])
def test_other_families_load_and_export_with_parity(family, head, pair, tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  hf = _hf_model(family, head)
  hf.save_pretrained(tmp_path / 'hf')
  model, params = hf_heads.load_pretraining_model(tmp_path / 'hf')
  assert getattr(model.objective, 'pair', '') == pair
  if family == 'Albert':  # the transform's output is the embedding width, not hidden
    assert params['head']['dense']['kernel'].shape == (32, 16)
  if family == 'Roberta':
    assert model.objective.transform_activation == 'gelu'
  batch = _batch(family)
  mlm, sop = _theirs(hf, batch)
  out, _ = model.apply({'params': params}, batch['input_ids'], batch['attention_mask'],
                       batch.get('token_type_ids'))
  ours = out['mlm'] if pair else out
  real = batch['attention_mask'] > 0
  # Tolerance 1e-4 absolute (float32 on both sides).
  np.testing.assert_allclose(np.asarray(ours)[real], mlm[real], atol=1e-4)
  if pair:
    np.testing.assert_allclose(out['pair'], sop, atol=1e-4)
  hf_heads.export_pretraining_model(model, params, tmp_path / 'out')
  back, info = type(hf).from_pretrained(tmp_path / 'out', output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  back.set_attn_implementation('eager')
  mlm2, sop2 = _theirs(back.eval(), batch)
  np.testing.assert_allclose(mlm2[real], np.asarray(ours)[real], atol=1e-4)
  if pair:
    np.testing.assert_allclose(sop2, out['pair'], atol=1e-4)
  assert isinstance(back, getattr(transformers, family + head))


def test_bare_albert_gets_fresh_factorised_mlm_and_sop_heads(tmp_path, caplog):
  caplog.set_level('INFO')
  _hf_model('Albert', 'Model').save_pretrained(tmp_path / 'hf')
  model, params = hf_heads.load_pretraining_model(tmp_path / 'hf', pair='sop')
  assert model.objective == PreTraining(pair='sop', head_dropout=0.1)
  assert 'no masked-LM head' in caplog.text and 'no sop head' in caplog.text
  assert params['head']['dense']['kernel'].shape == (32, 16)
  assert params['pair_head']['out']['kernel'].shape == (32, 2)
  batch = _batch('Albert')
  out, _ = model.apply({'params': params}, batch['input_ids'], batch['attention_mask'])
  assert out['mlm'].shape == (2, 12, 99) and np.isfinite(np.asarray(out['mlm'])).all()
  # MLM alone exports as AlbertForMaskedLM, which has no pooler: the pooler is left out.
  import transformers  # pylint: disable=g-import-not-at-top
  model, params = hf_heads.load_pretraining_model(tmp_path / 'hf')
  assert model.objective == MaskedLM() and model.encoder.use_pooler
  hf_heads.export_pretraining_model(model, params, tmp_path / 'out')
  _, info = transformers.AlbertForMaskedLM.from_pretrained(tmp_path / 'out',
                                                          output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info


def test_unsupported_combinations_are_clear_errors(tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  _hf_model('Roberta', 'ForMaskedLM').save_pretrained(tmp_path / 'rob')
  with pytest.raises(ValueError, match="pair='nsp' has no Hugging Face roberta layout"):
    hf_heads.load_pretraining_model(tmp_path / 'rob', pair='nsp')
  model, params = hf_heads.load_pretraining_model(tmp_path / 'rob')
  bad = TaskModel(model.encoder, MaskedLM(transform_activation='relu'))
  with pytest.raises(ValueError, match="activation 'gelu'"):
    hf_heads.export_pretraining_model(bad, params, tmp_path / 'bad')
  with pytest.raises(ValueError, match='no Hugging Face roberta layout'):
    hf_heads.export_pretraining_model(TaskModel(model.encoder, PreTraining(pair='sop')),
                                      params, tmp_path / 'bad')
  # An untied decoder, then an unknown head tensor, are checkpoint errors.
  weights = tmp_path / 'rob' / 'model.safetensors'
  tensors = load_file(str(weights))
  save_file({**tensors, 'lm_head.decoder.weight': np.ones((99, 32), np.float32)}, str(weights))
  with pytest.raises(ValueError, match='not tied to the word embeddings'):
    hf_heads.load_pretraining_model(tmp_path / 'rob')
  save_file({**tensors, 'lm_head.extra.weight': np.ones((3,), np.float32)}, str(weights))
  with pytest.raises(ValueError, match=r'does not know: \[.lm_head.extra.weight'):
    hf_heads.load_pretraining_model(tmp_path / 'rob')
