"""Tiny saved runs for the experiment scripts' tests."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from research.checkpoints import load_tokenizer
from research.data import tasks
from research.models import EncoderConfig
from research.testing import write_synthetic_data
from research.train import build, saved_runs
from research.train.defaults import trainer_defaults


@pytest.fixture(scope='module')
def make_tiny_run(tmp_path_factory, minilm_folder):
  """make(num_layers) -> a random 4-head, 32-wide SST-2 classifier saved as a run."""
  def make(num_layers: int = 2) -> str:
    root = tmp_path_factory.mktemp('tiny_data')
    config = trainer_defaults()
    config.data_dir = write_synthetic_data(root, sst2=64)['glue']
    config.model = str(minilm_folder)
    config.max_length, config.pad_multiple = 32, 32
    config.batch_size, config.eval_batch_size, config.eval_examples = 8, 16, 32
    config.pooling = 'pooler'  # BERT's sequence head, so the run exports
    encoder = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=num_layers,
                            num_heads=4, intermediate_size=64, max_position_embeddings=64)
    model = build.build_model(config, tasks.get_task('sst2'), encoder)
    ids = jnp.ones((1, 8), jnp.int32)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), ids, ids)['params'])
    folder = tmp_path_factory.mktemp('runs') / 'base'
    saved_runs.write_run(str(folder), model, params, config=config,
                         tokenizer=load_tokenizer(str(minilm_folder)))
    return str(folder)
  return make
