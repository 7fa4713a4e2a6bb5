"""The trainer end to end through TFDS (`--config.data_dir=''`): `tfds.load` with
TensorFlow, offline, the builder's download mocked by records of the synthetic files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from research.data import sources
from research.train import trainer
from research.train.defaults import trainer_defaults


def test_trainer_reads_sst2_through_tfds_load(tiny_model, synthetic_root, tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  tf = pytest.importorskip('tensorflow', reason='tfds.load needs TensorFlow')
  glue = str(Path(synthetic_root) / 'glue')
  splits = {'train': sources.load_examples('sst2', 'train', glue),
            'validation': sources.load_examples('sst2', 'validation', glue)}
  seen = []

  def as_dataset(builder, split=None, **kwargs):
    del builder, kwargs
    seen.append(split)
    rows = splits[split]
    return tf.data.Dataset.from_tensor_slices({
        'idx': np.array([r['idx'] for r in rows], np.int32),
        'sentence': np.array([r['text_a'] for r in rows]),
        'label': np.array([r['label'] for r in rows], np.int64)})

  config = trainer_defaults()
  config.model, config.data_dir = tiny_model, ''  # '' = TFDS
  config.train_examples, config.eval_examples = 64, 32
  config.batch_size, config.eval_batch_size, config.max_length = 16, 16, 32
  config.pad_multiple, config.total_steps, config.log_every = 32, 2, 1
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    result = trainer.train_and_evaluate(config, tmp_path)
  assert sorted(seen) == ['train', 'validation']
  assert 0.0 <= result['final']['accuracy'] <= 100.0
