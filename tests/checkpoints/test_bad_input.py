"""Malformed checkpoints and bad inputs give clear errors that name the problem."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from research.checkpoints import CheckpointError, load_pretrained, resolve
from research.models.sentence_encoder import SentenceEncoder


@pytest.fixture
def tiny_folder(tmp_path, hf_model):
  hf_model('bert').save_pretrained(tmp_path / 'ckpt')
  return tmp_path / 'ckpt'


def rewrite_tensors(folder, edit):
  tensors = load_file(str(folder / 'model.safetensors'))
  edit(tensors)
  save_file(tensors, str(folder / 'model.safetensors'))


def test_missing_tensor_is_listed(tiny_folder):
  rewrite_tensors(tiny_folder, lambda t: t.pop('encoder.layer.1.attention.self.key.weight'))
  with pytest.raises(CheckpointError, match=r'missing tensors.*layer\.1\.attention\.self\.key'):
    load_pretrained(str(tiny_folder))


def test_missing_tensor_allowed_by_dont_load(tiny_folder):
  rewrite_tensors(tiny_folder, lambda t: t.pop('encoder.layer.1.attention.self.key.weight'))
  _, params = load_pretrained(str(tiny_folder), dont_load=[r'layer_1/attention/key/kernel'])
  assert params['layer_1']['attention']['key']['kernel'].shape == (32, 4, 8)


def test_misshaped_tensor_is_listed(tiny_folder):
  def shrink(t):
    t['encoder.layer.0.intermediate.dense.weight'] = t[
        'encoder.layer.0.intermediate.dense.weight'][:30]
  rewrite_tensors(tiny_folder, shrink)
  with pytest.raises(CheckpointError, match=r'mis-shaped.*intermediate\.dense\.weight.*\(30, 32\)'):
    load_pretrained(str(tiny_folder))


def test_unexpected_tensor_is_listed(tiny_folder):
  rewrite_tensors(tiny_folder, lambda t: t.update(extra_adapter=np.zeros(3, np.float32)))
  with pytest.raises(CheckpointError, match='unexpected tensors.*extra_adapter'):
    load_pretrained(str(tiny_folder))


def test_pretraining_heads_are_ignored_but_strict_mode_rejects_them(tiny_folder):
  rewrite_tensors(tiny_folder, lambda t: t.update({'cls.predictions.bias': np.zeros(99, np.float32)}))
  load_pretrained(str(tiny_folder))  # ignored by default
  with pytest.raises(CheckpointError, match='cls.predictions.bias'):
    load_pretrained(str(tiny_folder), ignore=())


def test_unknown_model_type(tiny_folder):
  config = json.loads((tiny_folder / 'config.json').read_text())
  config['model_type'] = 't5'  # (gpt2 is supported since the decoder work)
  (tiny_folder / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match="Unsupported model_type 't5'.*bert"):
    load_pretrained(str(tiny_folder))


def test_folder_without_config(tiny_folder):
  (tiny_folder / 'config.json').unlink()
  with pytest.raises(FileNotFoundError, match='no config.json'):
    load_pretrained(str(tiny_folder))


def test_corrupt_weights_file(tiny_folder):
  (tiny_folder / 'model.safetensors').write_bytes(b'not a safetensors file')
  with pytest.raises(CheckpointError, match='Cannot read'):
    load_pretrained(str(tiny_folder))


def test_nonexistent_path():
  with pytest.raises(FileNotFoundError, match='does not exist'):
    resolve('./no/such/folder')


def test_hub_id_offline_is_a_clear_error(monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(OSError, match="Could not fetch 'someone/some-model'.*minilm-l6"):
    resolve('someone/some-model')


def test_bin_checkpoint_loads_with_torch(tiny_folder, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  tensors = load_file(str(tiny_folder / 'model.safetensors'))
  binary = tmp_path / 'bin'
  binary.mkdir()
  shutil.copy(tiny_folder / 'config.json', binary / 'config.json')
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, binary / 'pytorch_model.bin')
  _, a = load_pretrained(str(binary))
  _, b = load_pretrained(str(tiny_folder))
  np.testing.assert_array_equal(a['layer_0']['mlp']['output']['kernel'],
                                b['layer_0']['mlp']['output']['kernel'])


def test_bin_checkpoint_without_torch(tiny_folder, tmp_path, monkeypatch):
  binary = tmp_path / 'bin'
  binary.mkdir()
  shutil.copy(tiny_folder / 'config.json', binary / 'config.json')
  (binary / 'pytorch_model.bin').write_bytes(b'\0')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch now raises ImportError
  with pytest.raises(CheckpointError, match='pytorch_model.bin, which needs torch'):
    load_pretrained(str(binary))


def test_folder_without_weights(tiny_folder):
  (tiny_folder / 'model.safetensors').unlink()
  with pytest.raises(CheckpointError, match='no model.safetensors'):
    load_pretrained(str(tiny_folder))


@pytest.fixture(scope='module')
def sentence_encoder():
  try:
    return SentenceEncoder.load('minilm-l6', max_length=16)
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.mark.parametrize('sentences, error, message', [
    ([], ValueError, 'No sentences'),
    (['fine', ''], ValueError, 'Sentence 1 is empty'),
    (['fine', '   '], ValueError, 'Sentence 1 is empty'),
    (['fine', None], TypeError, 'Sentence 1 is NoneType'),
    ('a string', TypeError, 'list of sentences'),
])
def test_bad_sentences(sentence_encoder, sentences, error, message):
  with pytest.raises(error, match=message):
    sentence_encoder.encode(sentences)


def test_over_long_sentence_is_truncated_and_stated(sentence_encoder, caplog):
  long = ' '.join(['word'] * 100)
  batch = sentence_encoder.tokenize(['short one', long])
  assert batch['input_ids'].shape[1] == 16
  assert list(batch['truncated']) == [1]
  assert 'Truncated 1 sentence(s) to max_length=16' in caplog.text
  assert sentence_encoder.encode(['short one', long]).shape == (2, 384)


def test_max_length_beyond_position_table(sentence_encoder):
  with pytest.raises(ValueError, match='exceeds the position table'):
    SentenceEncoder(sentence_encoder.config, sentence_encoder.params,
                    sentence_encoder.tokenizer, max_length=1000)
