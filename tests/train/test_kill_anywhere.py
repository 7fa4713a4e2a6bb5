"""Kill anywhere, for every kind of run: SIGKILL in the middle of a checkpoint write and
right after a checkpoint, then rerun; the params end bit-identical to an uninterrupted
run. Fine-tuning has its own tests (test_trainer.py); here QAT, masked-LM and MLM+SOP
pre-training and in-step distillation of intermediates."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from research.train import trainer
from research.train.defaults import pretraining_defaults, trainer_defaults

RUNNER = Path(__file__).with_name('run_killable.py')
WORDS = ('the cat sat on a mat while rain fell over old town roofs and birds sang softly '
         'near quiet rivers under grey morning skies').split()


def run(config, workdir, out, env=None, wait=True):
  path = Path(str(out) + '.config.json')
  path.write_text(config.to_json())
  proc = subprocess.Popen([sys.executable, str(RUNNER), 'train', str(path), str(workdir),
                           str(out)], env={**os.environ, **(env or {})},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  if wait:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  return proc


def kill_mid_write_then_after_checkpoint_then_finish(config, workdir, out):
  """1: killed while writing checkpoint 4; 2: rerun, killed once checkpoint 6 exists;
  3: rerun to the end."""
  proc = run(config, workdir, out, {'KILL_IN': 'checkpoints', 'KILL_AT_STEP': '4'}, wait=False)
  proc.communicate(timeout=600)
  assert proc.returncode == -signal.SIGKILL, 'the run was not killed while writing'
  entries = os.listdir(workdir / 'checkpoints')
  assert '4' not in entries and any(e.startswith('4.') for e in entries), entries
  proc = run(config, workdir, out, wait=False)
  deadline = time.time() + 300
  while not (workdir / 'checkpoints' / '6').is_dir():
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  run(config, workdir, out)


def assert_identical(a, b):
  a, b = np.load(a), np.load(b)
  assert a.files == b.files
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def small(config, steps=8):
  config.total_steps, config.checkpoint_every, config.eval_every = steps, 2, steps
  config.log_every, config.dropout = 1, 0.0
  config.optimizer.learning_rate = 1e-3
  return config


def task_config(model, root):
  c = trainer_defaults()
  c.model, c.data_dir = model, str(Path(root) / 'glue')
  c.train_examples, c.eval_examples = 64, 16
  c.batch_size, c.eval_batch_size = 8, 16
  c.max_length, c.pad_multiple = 32, 32
  return small(c)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """Documents of random words (blank-line separated), for masked-LM and SOP runs."""
  rng = np.random.default_rng(0)
  documents = ['\n'.join(' '.join(rng.choice(WORDS, 9)) for _ in range(6)) for _ in range(40)]
  path = tmp_path_factory.mktemp('corpus') / 'words.txt'
  path.write_text('\n\n'.join(documents) + '\n')
  return str(path)


def pretrain_config(model, corpus, objective):
  c = pretraining_defaults(corpus, objective)
  c.model = model
  c.corpus.dev_sequences, c.corpus.cache_dir = 4, 'off'
  c.max_length = c.pad_multiple = 32
  c.batch_size, c.eval_batch_size = 4, 4
  c.num_epochs = 0
  return small(c)


@pytest.fixture(scope='module')
def teacher(tiny_model, synthetic_root, tmp_path_factory):
  folder = tmp_path_factory.mktemp('teacher') / 'run'
  trainer.train_and_evaluate(task_config(tiny_model, synthetic_root), folder)
  return str(folder)


def kinds(tiny_model, synthetic_root, corpus, teacher):
  qat = task_config(tiny_model, synthetic_root)
  qat.quant = 'w4,a8'
  distil = task_config(tiny_model, synthetic_root)
  distil.init_from = f'{teacher}:best'
  distil.distill.teachers, distil.distill.mode = teacher, 'in_step'
  distil.distill.hidden_weight = distil.distill.attention_weight = 1.0
  return {'qat': qat, 'mlm': pretrain_config(tiny_model, corpus, 'mlm'),
          'mlm+sop': pretrain_config(tiny_model, corpus, 'mlm+sop'), 'distill_in_step': distil}


@pytest.mark.parametrize('kind', ['qat', 'mlm', 'mlm+sop', 'distill_in_step'])
def test_killed_anywhere_ends_bit_identical(kind, tiny_model, synthetic_root, corpus, teacher,
                                            tmp_path):
  config = kinds(tiny_model, synthetic_root, corpus, teacher)[kind]
  run(config, tmp_path / 'reference', tmp_path / 'reference.npz')
  kill_mid_write_then_after_checkpoint_then_finish(config, tmp_path / 'killed',
                                                   tmp_path / 'killed.npz')
  assert_identical(tmp_path / 'reference.npz', tmp_path / 'killed.npz')
