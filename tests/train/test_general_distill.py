"""General (task-agnostic) distillation through the real trainer: a student cut from a
tiny teacher learns its hidden states and relations on a few Shakespeare lines, then
seeds a task fine-tune; bad input is named."""
from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from experiments.configs import general_distill
from research.checkpoints import export_pretrained
from research.models import EncoderConfig, init_params
from research.train import defaults, saved_runs, student, teachers, trainer
from research.train.metric_writer import read_metrics
from tests.conftest import SHARED_DATA


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  """A 4-layer, 32-wide random BERT with the bundled MiniLM tokenizer."""
  config = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=4, num_heads=4,
                         intermediate_size=64, max_position_embeddings=128)
  folder = tmp_path_factory.mktemp('teacher')
  export_pretrained(config, init_params(config, jax.random.PRNGKey(1)), folder,
                    tokenizer_from='minilm-l6')
  return str(folder)


@pytest.fixture(scope='module')
def lines(tmp_path_factory):
  text = (SHARED_DATA / 'corpus' / 'tinyshakespeare' / 'input.txt').read_text()
  path = tmp_path_factory.mktemp('corpus') / 'shakespeare.txt'
  path.write_text('\n'.join(text.split('\n')[:300]))
  return str(path)


def gd_config(teacher_ref, corpus, spec='layers=1,3 hidden=16 heads=2 order=leading'):
  c = defaults.general_distillation_defaults(teacher_ref, corpus, spec)
  c.corpus.dev_sequences, c.corpus.max_documents = 8, 0
  c.max_length, c.pad_multiple = 32, 32  # one padded length: one compilation
  c.batch_size, c.eval_batch_size = 8, 8
  c.total_steps, c.log_every, c.checkpoint_every, c.eval_every = 30, 1, 30, 10
  c.optimizer.learning_rate, c.optimizer.warmup_ratio = 3e-3, 0.0
  return c


@pytest.fixture(scope='module')
def distilled(teacher, lines, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('gd')
  result = trainer.train_and_evaluate(gd_config(teacher, lines), workdir)
  return workdir, result


def test_general_distillation_lowers_its_loss(distilled):
  workdir, result = distilled
  train = read_metrics(workdir, 'train')
  assert [r['step'] for r in train] == list(range(1, 31))
  # Distillation terms only: no masked-LM loss term, the relation and hidden losses.
  assert 'task_loss' not in train[0] and {'hidden_loss', 'relation_loss'} <= set(train[0])
  start = np.mean([r['loss'] for r in train[:3]])
  end = np.mean([r['loss'] for r in train[-3:]])
  assert end < 0.8 * start, (start, end)
  # The student is the cut one (2 layers, 16 wide, 2 heads), and best/ is the last step.
  encoder = result['model'].encoder
  assert (encoder.num_layers, encoder.hidden_size, encoder.num_heads) == (2, 16, 2)
  # Evaluation reports the terms' loss on the dev sequences; it falls, and best/ is the
  # step of the lowest (the untrained masked-LM head's accuracy says nothing).
  evals = read_metrics(workdir, 'eval')
  assert [r['step'] for r in evals] == [10, 20, 30]
  assert {'dev_loss', 'dev_loss/hidden_loss', 'dev_loss/relation_loss'} <= set(evals[0])
  assert evals[-1]['dev_loss'] < evals[0]['dev_loss']
  lowest = min(evals, key=lambda r: r['dev_loss'])
  assert result['best'] == {'score': pytest.approx(-lowest['dev_loss']),
                            'step': lowest['step']}


def test_the_student_seeds_a_task_fine_tune(distilled, synthetic_root, tmp_path):
  workdir, _ = distilled
  c = defaults.trainer_defaults()
  c.task, c.data_dir, c.init_from = 'sst2', f'{synthetic_root}/glue', str(workdir)
  c.train_examples, c.eval_examples, c.max_length, c.pad_multiple = 32, 16, 32, 32
  c.batch_size, c.eval_batch_size, c.total_steps, c.log_every = 8, 16, 2, 1
  c.optimizer.learning_rate = 0.0  # the encoder stays the distilled one
  result = trainer.train_and_evaluate(c, tmp_path / 'sst2')
  assert result['model'].encoder.hidden_size == 16
  best, _ = saved_runs.restore_params(str(workdir), 'best')
  for a, b in zip(jax.tree.leaves(result['params']['encoder']),
                  jax.tree.leaves(best['encoder'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_a_width_beyond_the_teachers_is_named(teacher, lines, tmp_path):
  config = gd_config(teacher, lines, 'layers=0,1 hidden=64 order=leading')
  with pytest.raises(ValueError, match=r"config.student=.*hidden_size=64 must be in 1\.\.32"):
    trainer.train_and_evaluate(config, tmp_path / 'wide')
  with pytest.raises(ValueError, match='layer.*7.*do not exist'):
    trainer.train_and_evaluate(gd_config(teacher, lines, 'layers=0,7'), tmp_path / 'deep')


def test_a_teacher_with_another_vocabulary_is_named(teacher, lines, tmp_path):
  other = EncoderConfig(vocab_size=30600, hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
  folder = tmp_path / 'other'
  export_pretrained(other, init_params(other, jax.random.PRNGKey(0)), folder,
                    tokenizer_from='minilm-l6')
  config = gd_config(teacher, lines, 'layers=0,1')
  config.distill.teachers = f'hf:{folder}'
  with pytest.raises(ValueError, match=re.escape(
      f'Teacher hf:{folder} has a vocabulary of 30600 tokens, the student '
      f'(config.model={teacher}) 30522')):
    trainer.train_and_evaluate(config, tmp_path / 'vocab')


def test_another_tokenizer_of_the_same_size_is_named():
  class Tokenizer:
    def __init__(self, vocab):
      self.vocab = vocab

    def get_vocab(self):
      return self.vocab

  with pytest.raises(ValueError, match='Teacher hf:a uses another tokenizer than the '
                     r'student \(runs/b\)'):
    teachers.check_same_vocabulary('hf:a', Tokenizer({'x': 0, 'y': 1}), 2, 'runs/b',
                                   Tokenizer({'x': 1, 'y': 0}), 2)


def test_bad_general_distillation_configs_are_named(teacher, lines, tmp_path):
  config = gd_config(teacher, lines)
  config.distill.hidden_weight = config.distill.relation_weight = 0.0
  with pytest.raises(ValueError, match='distils intermediates only'):
    trainer.check_config(config)
  config = gd_config(teacher, lines)
  config.distill.mode = 'cached'
  with pytest.raises(ValueError, match="mode='in_step'"):
    trainer.check_config(config)
  with pytest.raises(ValueError, match='add order=leading'):
    trainer.train_and_evaluate(gd_config(teacher, lines, 'layers=0 hidden=16'),
                               tmp_path / 'ranked')
  config = gd_config(teacher, lines)
  config.distill.teachers = str(tmp_path / 'no_such_run')
  with pytest.raises(FileNotFoundError, match="'hf:<alias"):
    trainer.train_and_evaluate(config, tmp_path / 'missing')
  with pytest.raises(ValueError, match='unknown name .depth.'):
    student.parse('layers=1 depth=2')
  with pytest.raises(ValueError, match='needs an integer'):
    student.parse('hidden=wide')
  config = gd_config(teacher, lines)
  config.scratch = 'num_layers=2'
  with pytest.raises(ValueError, match='exclude each other'):
    trainer.check_config(config)


def test_the_config_variants():
  c = defaults.complete(general_distill.get_config('layers=1+3+5,heads=6,hidden=192,runlocal'))
  assert c.student == 'layers=1,3,5 heads=6 hidden=192 order=leading'
  assert c.distill.teachers == 'hf:minilm-l6' and c.distill.alpha == 1.0
  assert c.total_steps == 6 and c.eval_every == 500  # evaluated at the end
  assert general_distill.get_config('layers=1,cpu_budget').eval_every == 100
  c = general_distill.get_config('layers=1+3,random')
  assert (c.scratch, c.student) == ('num_layers=2', '')
