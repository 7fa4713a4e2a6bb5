"""Fixtures of the trainer tests: a tiny random BERT checkpoint and synthetic task files."""
from __future__ import annotations

import jax
import pytest

from research.checkpoints import export_pretrained
from research.models import EncoderConfig, init_params
from research.testing import write_synthetic_data


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
  """A 2-layer, 32-wide random BERT with the bundled MiniLM tokenizer."""
  config = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=64, max_position_embeddings=128)
  folder = tmp_path_factory.mktemp('tiny_bert')
  export_pretrained(config, init_params(config, jax.random.PRNGKey(0)), folder,
                    tokenizer_from='minilm-l6')
  return str(folder)


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
  """Tiny SST-2, CoNLL-2003 and SQuAD files in their original formats."""
  return write_synthetic_data(tmp_path_factory.mktemp('data'))['root']
