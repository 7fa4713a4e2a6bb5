"""A tokenizer that cannot fit its model is an error naming both sizes and the folder."""
from __future__ import annotations

import json
import shutil

import pytest

from research.checkpoints import load_tokenizer
from research.checkpoints.hf_load import CheckpointError


def folder_with(tmp_path, minilm_folder, vocab_size, model_type='bert', tokenizer=True):
  folder = tmp_path / 'model'
  folder.mkdir()
  config = json.loads((minilm_folder / 'config.json').read_text())
  (folder / 'config.json').write_text(json.dumps({**config, 'model_type': model_type,
                                                  'vocab_size': vocab_size}))
  if tokenizer:
    for name in ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                 'vocab.txt'):
      if (minilm_folder / name).is_file():
        shutil.copyfile(minilm_folder / name, folder / name)
  return folder


def test_embedding_tables_padded_beyond_the_tokenizer_are_normal(tmp_path, minilm_folder):
  folder = folder_with(tmp_path, minilm_folder, 30528)  # 30522 rounded up to 64
  assert len(load_tokenizer(str(folder))) == 30522


def test_more_tokens_than_embedding_rows(tmp_path, minilm_folder):
  folder = folder_with(tmp_path, minilm_folder, 99)
  with pytest.raises(CheckpointError, match=r'has 30522 tokens but .* 99 rows') as info:
    load_tokenizer(str(folder))
  assert str(folder) in str(info.value)


def test_far_fewer_tokens_than_rows(tmp_path, minilm_folder):
  folder = folder_with(tmp_path, minilm_folder, 591, tokenizer=False)
  (folder / 'vocab.txt').write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']))
  with pytest.raises(CheckpointError, match=r'has 5 tokens for a model with 591 embedding rows'):
    load_tokenizer(str(folder))


def test_tokenizer_files_that_cannot_build_the_configs_tokenizer(tmp_path, minilm_folder):
  """An ALBERT config beside only a vocab.txt: transformers would silently build a
  5-token tokenizer from no spiece.model; we name the missing file."""
  folder = folder_with(tmp_path, minilm_folder, 591, model_type='albert', tokenizer=False)
  shutil.copyfile(minilm_folder / 'vocab.txt', folder / 'vocab.txt')
  with pytest.raises(CheckpointError, match=r"lacks \['spiece.model'\].*albert tokenizer") as info:
    load_tokenizer(str(folder))
  assert 'vocab.txt' in str(info.value)
