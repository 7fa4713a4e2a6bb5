"""GPT-2 folders whose LM head is not the word-embedding table, and special-token ids
outside the vocabulary (float32, CPU; logits within 1e-4 of transformers)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from research.checkpoints import export_pretrained, hf_heads, load_pretrained  # pylint: disable=g-import-not-at-top
from research.models import generate as gen  # pylint: disable=g-import-not-at-top
from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
from research.objectives import CausalLM  # pylint: disable=g-import-not-at-top
from tests.checkpoints.test_gpt2 import TOL, make_gpt2, ours, reference  # pylint: disable=g-import-not-at-top


def save_with_head(model, folder, head):
  """Saves `model` with `head` as lm_head.weight (transformers drops a tied head)."""
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  model.save_pretrained(folder)
  state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
  state['lm_head.weight'] = head
  save_file(state, str(folder / 'model.safetensors'), metadata={'format': 'pt'})


@pytest.fixture(scope='module')
def untied(tmp_path_factory):
  """A GPT-2 whose config unties the head, saved with a head of its own."""
  folder = tmp_path_factory.mktemp('untied')
  model = make_gpt2(tie_word_embeddings=False)
  torch.manual_seed(1)
  with torch.no_grad():
    model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight))
  model.save_pretrained(folder)
  return folder, model


@pytest.fixture(scope='module')
def tied_but_different(tmp_path_factory):
  """A GPT-2 whose config says tied but whose checkpoint holds another head."""
  folder = tmp_path_factory.mktemp('disagree')
  model = make_gpt2()
  torch.manual_seed(2)
  save_with_head(model, folder, torch.randn_like(model.lm_head.weight))
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(folder),
                                                          attn_implementation='eager')
  return folder, reloaded.eval()


@pytest.mark.parametrize('case', ['untied', 'tied_but_different'])
def test_logits_and_greedy_generation_match_transformers(case, request, rng, caplog):
  folder, model = request.getfixturevalue(case)
  assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
  with caplog.at_level(logging.WARNING):
    config, params = load_pretrained(str(folder))
  assert not config.tie_word_embeddings and 'lm_head' in params
  # The disagreement is said, at WARNING, as transformers says it; a config that unties
  # the head needs no warning.
  said = [r for r in caplog.records if 'lm_head.weight differs' in r.getMessage()]
  assert len(said) == (1 if case == 'tied_but_different' else 0)
  ids = rng.integers(0, 99, (2, 9))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  _, _, logits = ours(config, params, ids, mask)
  real = mask.astype(bool)[..., None]
  diff = np.abs(np.where(real, np.asarray(logits) - reference(model, ids, mask).logits.numpy(),
                         0.0)).max()
  assert diff < TOL, diff
  prompt = ids[:1, :5]
  out = gen.generate(config, params, prompt, np.ones_like(prompt), max_new_tokens=6,
                     greedy=True)
  with torch.no_grad():
    want = model.generate(torch.from_numpy(prompt.astype(np.int64)), do_sample=False,
                          max_new_tokens=6, min_new_tokens=6, pad_token_id=98)[:, 5:]
  np.testing.assert_array_equal(np.asarray(out.tokens), want.numpy())


def test_an_untied_head_exports_and_reloads_exactly(untied, tmp_path, rng):
  folder, model = untied
  config, params = load_pretrained(str(folder))
  hf_heads.export_task_model(TaskModel(config, CausalLM()), {'encoder': params},
                             tmp_path / 'task')
  export_pretrained(config, params, tmp_path / 'bare')
  ids = rng.integers(0, 99, (2, 7))
  mask = np.ones_like(ids)
  for name in ('task', 'bare'):
    written = json.loads((tmp_path / name / 'config.json').read_text())
    assert written['tie_word_embeddings'] is False
    reloaded, info = transformers.GPT2LMHeadModel.from_pretrained(
        str(tmp_path / name), output_loading_info=True, attn_implementation='eager')
    assert not info['missing_keys'] and not info['unexpected_keys'], info
    np.testing.assert_allclose(reference(reloaded.eval(), ids, mask).logits.numpy(),
                               reference(model, ids, mask).logits.numpy(), atol=1e-5)


def test_a_tied_head_stored_as_a_copy_stays_tied(tmp_path):
  model = make_gpt2()
  save_with_head(model, tmp_path, model.transformer.wte.weight.detach().clone())
  config, params = load_pretrained(str(tmp_path))
  assert config.tie_word_embeddings and 'lm_head' not in params


def test_an_untied_config_without_its_head_is_refused(tmp_path):
  model = make_gpt2(tie_word_embeddings=False)
  model.save_pretrained(tmp_path)
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  tensors = load_file(str(tmp_path / 'model.safetensors'))
  tensors.pop('lm_head.weight')
  save_file(tensors, str(tmp_path / 'model.safetensors'))
  from research.checkpoints.hf_load import CheckpointError  # pylint: disable=g-import-not-at-top
  with pytest.raises(CheckpointError, match=r'missing tensors: \[.lm_head.weight'):
    load_pretrained(str(tmp_path))


def test_special_token_ids_outside_the_vocabulary_are_kept_on_export(tmp_path):
  """A config copied from GPT-2 to a 25-token vocabulary keeps 50256 as bos / eos: an
  export writes them back unchanged, never mapped onto a real token (0 is a real one)."""
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=25, n_positions=16, n_embd=8, n_layer=1,
                                   n_head=2)
  assert config.bos_token_id == config.eos_token_id == 50256
  transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / 'source')
  ours_config, params = load_pretrained(str(tmp_path / 'source'))
  assert (ours_config.bos_token_id, ours_config.eos_token_id) == (50256, 50256)
  export_pretrained(ours_config, params, tmp_path / 'out')
  hf_heads.export_task_model(TaskModel(ours_config, CausalLM()), {'encoder': params},
                             tmp_path / 'task')
  for name in ('out', 'task'):
    written = json.loads((tmp_path / name / 'config.json').read_text())
    assert (written['bos_token_id'], written['eos_token_id']) == (50256, 50256), name


def test_a_decoder_trained_here_writes_its_tokenizers_ids(tmp_path):
  from research.checkpoints import hf_names  # pylint: disable=g-import-not-at-top
  from research.models import init_params  # pylint: disable=g-import-not-at-top
  from tests.models.test_generate import _tiny_tokenizer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  tokenizer = _tiny_tokenizer()
  tokenizer.save_pretrained(tmp_path / 'tok')
  config = hf_names.gpt2_config(vocab_size=len(tokenizer), hidden_size=8, num_layers=1,
                                num_heads=2, intermediate_size=16, max_position_embeddings=16)
  assert config.bos_token_id is None and config.eos_token_id is None
  params = init_params(config, jax.random.PRNGKey(0))
  hf_heads.export_task_model(TaskModel(config, CausalLM()), {'encoder': params},
                             tmp_path / 'out', tokenizer_from=str(tmp_path / 'tok'))
  written = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert written['eos_token_id'] == tokenizer.eos_token_id < len(tokenizer)
