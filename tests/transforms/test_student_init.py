"""Student initialisation (research/transforms/student_init.py) and its transforms in
experiments/transform.py: kept layers compute what they computed, dropped heads and FFN
units are exactly their contribution, and the new run starts a student."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import EncoderConfig
from research.models.encoder import Encoder, init_params
from research.models.heads import TaskModel
from research.objectives import Classification
from research.transforms import student_init

CONFIG = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=4, num_heads=2,
                       intermediate_size=32, max_position_embeddings=16)
IDS = jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 6)), jnp.int32)
MASK = jnp.ones_like(IDS).at[1, 4:].set(0)


@pytest.fixture(scope='module')
def params():
  return jax.tree.map(np.asarray, init_params(CONFIG, jax.random.PRNGKey(0)))


def hidden_states(config, params):
  return Encoder(config).apply({'params': params}, IDS, MASK)[1]['hidden_states']


def test_select_layers_keeps_whole_layers(params):
  config, kept = student_init.select_layers(CONFIG, params, [0, 1])
  assert config.num_layers == 2 and sorted(k for k in kept if k.startswith('layer_')) == [
      'layer_0', 'layer_1']
  # The first two layers of the source compute what they did.
  np.testing.assert_allclose(hidden_states(config, kept)[2], hidden_states(CONFIG, params)[2],
                             atol=1e-5)
  config, every_other = student_init.select_layers(CONFIG, params, [1, 3])
  np.testing.assert_array_equal(every_other['layer_1']['mlp']['output']['kernel'],
                                params['layer_3']['mlp']['output']['kernel'])
  assert every_other['embeddings'] is params['embeddings']
  # Per-layer sizes are selected; a TaskModel's tree keeps its head and scalar mix weights.
  wide = CONFIG.replace(intermediate_size=(32, 24, 16, 8))
  task = {'encoder': init_params(wide, jax.random.PRNGKey(1)), 'head': {'out': {'kernel': 1}},
          'layer_mix': {'weights': np.arange(5.0), 'gamma': np.ones(())}}
  config, out = student_init.select_layers(wide, task, [1, 3])
  assert config.intermediate_size == (24, 8)
  np.testing.assert_array_equal(out['layer_mix']['weights'], [0.0, 2.0, 4.0])
  assert out['head'] is task['head']


def test_select_layers_errors(params):
  with pytest.raises(ValueError, match=r'layer\(s\) \[4\] do not exist'):
    student_init.select_layers(CONFIG, params, [0, 4])
  with pytest.raises(ValueError, match='at least one layer'):
    student_init.select_layers(CONFIG, params, [])
  with pytest.raises(ValueError, match='sharing'):
    student_init.select_layers(CONFIG.shared(1), params, [0])
  from research.runs import transform  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="layers '0,two': 'two' is not an int"):
    transform.select_layers_run(None, layers='0,two')


def test_truncating_heads_and_ffn_equals_zeroing_them(params):
  config, small = student_init.truncate_width(CONFIG, params, num_heads=1, intermediate_size=20)
  assert (config.num_heads, config.intermediate_size, config.head_dim) == (1, 20, 8)
  assert small['layer_2']['attention']['query']['kernel'].shape == (16, 1, 8)
  assert small['layer_2']['attention']['out']['kernel'].shape == (1, 8, 16)
  # The same model with the dropped heads' output rows and FFN units' rows set to zero.
  zeroed = jax.tree.map(np.copy, params)
  for i in range(CONFIG.num_layers):
    layer = zeroed[f'layer_{i}']
    layer['attention']['out']['kernel'][1:] = 0.0
    layer['mlp']['output']['kernel'][20:] = 0.0
  np.testing.assert_allclose(hidden_states(config, small)[-1],
                             hidden_states(CONFIG, zeroed)[-1], atol=1e-5)


def test_truncating_the_hidden_size_keeps_leading_coordinates(params):
  model = TaskModel(CONFIG, Classification(num_labels=2, head_hidden=4))
  task = jax.tree.map(np.asarray, nn.meta.unbox(
      model.init(jax.random.PRNGKey(0), IDS, MASK)['params']))
  config, small = student_init.truncate_width(CONFIG, task, hidden_size=8)
  assert config.hidden_size == 8 and config.head_dim == 8 and config.num_heads == 2
  enc = small['encoder']
  assert enc['embeddings']['word_embeddings']['embedding'].shape == (50, 8)
  assert enc['layer_0']['attention']['query']['kernel'].shape == (8, 2, 8)
  assert enc['layer_0']['attention']['out']['kernel'].shape == (2, 8, 8)
  assert enc['layer_0']['mlp']['output']['kernel'].shape == (32, 8)
  assert enc['pooler']['kernel'].shape == (8, 8)
  np.testing.assert_array_equal(enc['layer_3']['output_norm']['scale'],
                                task['encoder']['layer_3']['output_norm']['scale'][:8])
  assert small['head']['dense']['kernel'].shape == (8, 4)
  logits, _ = model.clone(encoder=config).apply({'params': small}, IDS, MASK)
  assert logits.shape == (2, 2) and np.isfinite(np.asarray(logits)).all()
  with pytest.raises(ValueError, match=r'num_heads=3 must be in 1..2'):
    student_init.truncate_width(CONFIG, params, num_heads=3)
  with pytest.raises(ValueError, match='dense projections'):
    student_init.truncate_width(CONFIG.replace(projections=(('.*', 'low_rank:2'),)), params,
                                hidden_size=8)


def test_transform_writes_a_student_run(tmp_path, params):
  from research.runs import transform  # pylint: disable=g-import-not-at-top
  from research.train import saved_runs  # pylint: disable=g-import-not-at-top
  from research.train.defaults import trainer_defaults  # pylint: disable=g-import-not-at-top
  model = TaskModel(CONFIG, Classification(num_labels=2))
  task = {'encoder': params, 'head': jax.tree.map(np.asarray, nn.meta.unbox(model.init(
      jax.random.PRNGKey(0), IDS, MASK)['params']['head']))}
  saved_runs.write_run(str(tmp_path / 'teacher'), model, task, config=trainer_defaults())
  summary = transform.transform_run(str(tmp_path / 'teacher'), str(tmp_path / 'student'),
                                    'select_layers', layers='1,3')
  assert summary['params_after'] < summary['params_before']
  student = saved_runs.load_run(str(tmp_path / 'student'))
  assert student.model.encoder.num_layers == 2
  np.testing.assert_array_equal(student.params['encoder']['layer_0']['attention']['key']['kernel'],
                                params['layer_1']['attention']['key']['kernel'])
  narrow = transform.transform_run(str(tmp_path / 'student'), str(tmp_path / 'narrow'),
                                   'truncate_width', num_heads=1, hidden_size=8,
                                   order='leading')  # this run has no data to score
  assert saved_runs.load_run(narrow['out']).model.encoder.hidden_size == 8
  with pytest.raises(ValueError, match='needs layers'):
    transform.transform_run(str(tmp_path / 'teacher'), str(tmp_path / 'x'), 'select_layers')
