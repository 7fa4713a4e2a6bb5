"""Pre-training through the real trainer: MLM on a few Shakespeare lines, resume, init_from."""
from __future__ import annotations

import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments.configs import pretrain
from research.train import build, saved_runs, source, trainer
from research.train.build import build_model
from research.train.defaults import trainer_defaults
from research.train.metric_writer import read_metrics
from research.data import tasks
from tests.conftest import SHARED_DATA


@pytest.fixture(scope='module')
def lines(tmp_path_factory):
  """The first ~400 lines of tinyshakespeare (speeches separated by blank lines)."""
  text = (SHARED_DATA / 'corpus' / 'tinyshakespeare' / 'input.txt').read_text()
  path = tmp_path_factory.mktemp('corpus') / 'shakespeare.txt'
  path.write_text('\n'.join(text.split('\n')[:400]))
  return str(path)


def tiny_pretrain_config(model, corpus, objective='mlm'):
  c = pretrain.get_config(f'objective={objective},runlocal')
  c.model = model
  c.corpus.source = corpus
  c.corpus.dev_sequences = 8
  c.corpus.max_documents = 0  # all of the ~400 lines
  c.max_length, c.pad_multiple = 32, 32  # one padded length: each step compiles once
  c.batch_size, c.eval_batch_size = 4, 8
  c.total_steps, c.eval_every, c.checkpoint_every, c.log_every = 4, 2, 2, 1
  c.optimizer.learning_rate = 1e-3
  return c


def test_mlm_pretraining_resumes_and_seeds_a_fine_tune(tiny_model, lines, synthetic_root,
                                                       tmp_path):
  workdir = tmp_path / 'mlm'
  config = tiny_pretrain_config(tiny_model, lines)
  result = trainer.train_and_evaluate(config, workdir)
  train = read_metrics(workdir, 'train')
  assert [r['step'] for r in train] == [1, 2, 3, 4]
  assert all(np.isfinite(r['loss']) for r in train)
  assert train[0]['loss'] > 5.0  # ~ln(30522) = 10.3 for a random tiny model
  final = result['final']
  assert set(final) == {'mlm_accuracy', 'mlm_loss', 'perplexity'}
  assert 0 <= final['mlm_accuracy'] <= 100
  np.testing.assert_allclose(final['perplexity'], np.exp(final['mlm_loss']), rtol=1e-6)
  model_json = json.loads((workdir / 'model.json').read_text())
  assert model_json['objective']['kind'] == 'masked_lm'

  # Resume: drop the last checkpoint, rerun; steps 3-4 (their masks and dropout) repeat.
  shutil.rmtree(workdir / 'checkpoints' / '4')
  resumed = trainer.train_and_evaluate(config, workdir)
  assert [r['step'] for r in read_metrics(workdir, 'train')] == [1, 2, 3, 4, 3, 4]  # from 2
  for a, b in zip(jax.tree.leaves(result['params']), jax.tree.leaves(resumed['params'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)

  # The run seeds a fine-tune: encoder carried over, the MLM head dropped for a fresh one.
  glue = trainer_defaults()
  glue.task, glue.data_dir, glue.init_from = 'sst2', str(synthetic_root) + '/glue', str(workdir)
  encoder_config = source.load_source(trainer.check_config(glue)).encoder
  model = build_model(glue, tasks.get_task('sst2'), encoder_config)
  dummy = np.zeros((1, 8), np.int32)
  fresh = nn.meta.unbox(model.init(jax.random.PRNGKey(0), dummy, np.ones_like(dummy))['params'])
  params, fresh_parts = saved_runs.init_params(str(workdir), model, fresh)
  assert fresh_parts == ['head']
  best, _ = saved_runs.restore_params(str(workdir), 'best')
  for a, b in zip(jax.tree.leaves(params['encoder']), jax.tree.leaves(best['encoder'])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('objective', ['mlm+sop'])
def test_pair_pretraining_runs(tiny_model, lines, tmp_path, objective):
  config = tiny_pretrain_config(tiny_model, lines, objective)
  config.total_steps, config.eval_every = 2, 2
  result = trainer.train_and_evaluate(config, tmp_path / 'pairs')
  assert 0 <= result['final']['sop_accuracy'] <= 100
  assert set(result['params']) == {'encoder', 'head', 'pair_head'}


def test_config_variants_and_errors(tiny_model, lines, tmp_path):
  tapt = pretrain.get_config('task=sst2')
  assert tapt.corpus.source == 'task:sst2' and tapt.task == 'sst2'
  from research.train.optimizers import validate_config  # pylint: disable=g-import-not-at-top
  for arg in ('', 'task=sst2', 'corpus=tinyshakespeare,objective=mlm+sop,whole_word',
              'objective=mlm+nsp,runlocal', 'objective=clm,runlocal'):
    checked = pretrain.get_config(arg)
    trainer.check_config(checked)
    validate_config({**checked.optimizer.to_dict(), 'total_steps': 10})
    assert build.pretraining_objective(checked).kind in (
        'masked_lm', 'pretraining', 'causal_lm')
  config = tiny_pretrain_config(tiny_model, lines)
  config.corpus.objective = 'electra'
  with pytest.raises(ValueError, match='corpus.objective'):
    trainer.train_and_evaluate(config, tmp_path / 'bad')
  empty = tmp_path / 'empty.txt'
  empty.write_text('\n\n')
  config = tiny_pretrain_config(tiny_model, str(empty))
  with pytest.raises(ValueError, match='empty'):
    trainer.train_and_evaluate(config, tmp_path / 'empty_run')


def test_clm_corpus_is_packed_bare_without_masks(tok, lines):
  config = tiny_pretrain_config('unused', lines, 'clm')
  config.corpus.dev_sequences = 1000  # more than a tenth: capped
  spec, train, _, dev, batches = build.load_corpus(config, tok, len(tok), 4)
  assert spec.main_metric == 'accuracy'
  assert len(dev) == (len(train) + len(dev)) // 10
  assert all(len(f['input_ids']) == 32 for f in train[:-1])
  assert all(f['input_ids'][0] != tok.cls_token_id for f in train[:5])  # no [CLS] / masks
  batch = next(batches)
  assert 'labels' not in batch and batch['input_ids'].shape == (4, 32)
  mlm = tiny_pretrain_config('unused', lines, 'mlm')
  _, _, _, dev, batches = build.load_corpus(mlm, tok, len(tok), 4)
  assert all((f['labels'] != -100).any() for f in dev)
  assert 'labels' in next(batches)
  with pytest.raises(ValueError, match='embeds only'):
    build.load_corpus(mlm, tok, 1000, 4)


def test_pretraining_from_scratch_with_lamb_and_accumulation(tiny_model, lines, tmp_path):
  config = tiny_pretrain_config(tiny_model, lines, 'mlm+sop')
  config.scratch = 'num_layers=1,hidden_size=32,num_heads=2,intermediate_size=64'
  config.optimizer.name = 'lamb'
  config.optimizer.accumulate_steps = 2
  config.total_steps, config.eval_every = 2, 2
  result = trainer.train_and_evaluate(config, tmp_path / 'scratch')
  encoder = result['params']['encoder']
  assert sorted(k for k in encoder if k.startswith('layer_')) == ['layer_0']
  shapes = {np.shape(x) for x in jax.tree.leaves(encoder)}
  assert (30522, 32) in shapes and (32, 64) in shapes  # the tokenizer's vocab, new widths
  assert np.isfinite(result['final']['mlm_loss']) and result['final']['mlm_loss'] > 5.0
  model_json = json.loads((tmp_path / 'scratch' / 'model.json').read_text())
  assert model_json['encoder']['num_layers'] == 1 and model_json['encoder']['hidden_size'] == 32

  config.scratch = 'num_layer=1'
  with pytest.raises(ValueError, match='num_layer=1'):
    trainer.check_config(config)
  config.scratch, config.init_from = 'num_layers=1', str(tmp_path / 'scratch')
  with pytest.raises(ValueError, match='exclude each other'):
    trainer.check_config(config)
