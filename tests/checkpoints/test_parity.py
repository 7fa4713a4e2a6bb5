"""Numerical parity with transformers' PyTorch models (the reference), float32 on CPU."""
from __future__ import annotations

import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from research.checkpoints import export_pretrained, load_pretrained, load_tokenizer  # pylint: disable=g-import-not-at-top
from research.models import Encoder
from research.models.sentence_encoder import SentenceEncoder

TOL = 1e-4  # absolute, float32, every layer's hidden states

SENTENCES = [
    'it \'s a charming and often affecting journey .',
    'unflinchingly bleak and desperate',
    'the acting , costumes , music , cinematography and sound are all astounding given the '
    'production \'s austere locales , and the film never once loses its nerve .',
    'A',
]


def ours(config, params, batch, output_attentions=False):
  out, inter = Encoder(config).apply(
      {'params': params}, batch['input_ids'], batch['attention_mask'],
      batch.get('token_type_ids'), output_attentions=output_attentions)
  return out, inter


def reference(model, batch):
  eager = model.config._attn_implementation == 'eager'  # pylint: disable=protected-access
  with torch.no_grad():
    return model(**{k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in batch.items()},
                 output_hidden_states=True, output_attentions=eager)


def assert_hidden_states_close(inter, ref, mask):
  assert len(inter['hidden_states']) == len(ref.hidden_states)
  real = mask.astype(bool)[..., None]
  for i, (a, b) in enumerate(zip(inter['hidden_states'], ref.hidden_states)):
    diff = np.abs(np.where(real, np.asarray(a) - b.numpy(), 0.0)).max()
    assert diff < TOL, f'layer {i}: max abs diff {diff:.2e} >= {TOL}'


def test_minilm_checkpoint_matches_transformers(minilm_folder):
  config, params = load_pretrained('minilm-l6')
  tokenizer = load_tokenizer('minilm-l6')
  batch = dict(tokenizer(SENTENCES, padding=True, return_tensors='np'))
  assert len(set(batch['attention_mask'].sum(1))) == len(SENTENCES)  # different lengths
  _, inter = ours(config, params, batch, output_attentions=True)
  ref = reference(transformers.AutoModel.from_pretrained(
      str(minilm_folder), attn_implementation='eager').eval(), batch)
  assert_hidden_states_close(inter, ref, batch['attention_mask'])
  np.testing.assert_allclose(inter['pooled'], ref.pooler_output.numpy(), atol=TOL)
  np.testing.assert_allclose(np.asarray(inter['attentions'][3]), ref.attentions[3].numpy(),
                             atol=TOL)


@pytest.mark.parametrize('model_type', ['bert', 'roberta', 'distilbert', 'albert'])
def test_random_checkpoints_match_transformers(model_type, hf_model, tmp_path, rng):
  model = hf_model(model_type)
  model.save_pretrained(tmp_path)
  config, params = load_pretrained(str(tmp_path))
  assert config.model_type == model_type
  ids = rng.integers(3, 99, (3, 11))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  mask[2, 4:] = 0
  pad = config.pad_token_id
  ids = np.where(mask == 1, ids, pad)
  batch = {'input_ids': ids, 'attention_mask': mask}
  if config.type_vocab_size > 1:
    batch['token_type_ids'] = (np.arange(11)[None] >= 5).astype(np.int64).repeat(3, 0)
  _, inter = ours(config, params, batch, output_attentions=True)
  ref = reference(model, batch)
  assert_hidden_states_close(inter, ref, mask)
  for a, b in zip(inter['attentions'], ref.attentions):
    np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=TOL)


@pytest.mark.parametrize('model_type', ['bert', 'roberta', 'distilbert', 'albert'])
def test_export_round_trip(model_type, hf_model, tmp_path, rng):
  source = hf_model(model_type)
  source.save_pretrained(tmp_path / 'source')
  config, params = load_pretrained(str(tmp_path / 'source'))
  export_pretrained(config, params, tmp_path / 'exported')
  reloaded, info = transformers.AutoModel.from_pretrained(
      str(tmp_path / 'exported'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'], info
  ids = rng.integers(3, 99, (2, 9))
  batch = {'input_ids': ids, 'attention_mask': np.ones_like(ids)}
  ref = reference(reloaded.eval(), batch)
  _, inter = ours(config, params, batch)
  assert_hidden_states_close(inter, ref, batch['attention_mask'])
  # And our loader reads the export back to identical params.
  _, again = load_pretrained(str(tmp_path / 'exported'))
  flat, flat_again = (traverse_util.flatten_dict(t, sep='/') for t in (params, again))
  assert flat.keys() == flat_again.keys()
  for key in flat:
    np.testing.assert_array_equal(flat[key], flat_again[key], err_msg=key)


def test_minilm_export_loads_in_transformers(minilm_folder, tmp_path):
  config, params = load_pretrained('minilm-l6')
  export_pretrained(config, params, tmp_path, tokenizer_from='minilm-l6')
  model = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  batch = dict(tokenizer(SENTENCES[:2], padding=True, return_tensors='np'))
  _, inter = ours(config, params, batch)
  assert_hidden_states_close(inter, reference(model, batch), batch['attention_mask'])


def test_sentence_embeddings_match_transformers_recipe(minilm_folder):
  encoder = SentenceEncoder.load('minilm-l6')
  ours_vectors = encoder.encode(SENTENCES)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_folder))
  model = transformers.AutoModel.from_pretrained(str(minilm_folder)).eval()
  batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256,
                    return_tensors='pt')
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch['attention_mask'].unsqueeze(-1).float()
  ref = (hidden * mask).sum(1) / mask.sum(1)
  ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
  cosine = (ours_vectors * ref).sum(-1)
  assert cosine.min() >= 0.9999, cosine
  np.testing.assert_allclose(np.linalg.norm(ours_vectors, axis=-1), 1.0, atol=1e-5)
