"""The trainer end to end on a tiny model and synthetic task files (written by
`research.testing.write_synthetic_data`, so these tests never skip): logging,
checkpoints, resume after SIGKILL, multi-device equality, NaN handling and config errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from research.objectives import Classification
from research.train import run_config, trainer
from research.train.defaults import trainer_defaults
from research.train.metric_writer import read_metrics

RUNNER = Path(__file__).with_name('run_trainer.py')
DATA = Path()  # the synthetic data root, set once per module by `synthetic_data`


@pytest.fixture(scope='module', autouse=True)
def synthetic_data(synthetic_root):
  global DATA
  DATA = Path(synthetic_root)
  return DATA


def tiny_config(model, **overrides):
  c = trainer_defaults()
  c.model = model
  c.data_dir = str(DATA / 'glue')
  c.train_examples, c.eval_examples = 96, 40
  c.batch_size, c.eval_batch_size = 16, 16
  # One pad length (32) so each jitted step compiles once: tests stay fast.
  c.max_length, c.pad_multiple, c.bucket_batches = 32, 32, 2
  c.num_epochs, c.total_steps = 0, 6
  c.log_every, c.eval_every, c.checkpoint_every = 1, 3, 2
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_ratio = 0.5
  for key, value in overrides.items():
    c[key] = value
  return c


def run_subprocess(config, workdir, out, env=None, wait=True):
  path = Path(str(out) + '.config.json')
  path.write_text(config.to_json())
  cmd = [sys.executable, str(RUNNER), str(path), str(workdir), str(out)]
  proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  if wait:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  return proc


def test_end_to_end_logs_evaluates_and_checkpoints(tiny_model, tmp_path):
  result = trainer.train_and_evaluate(tiny_config(tiny_model), tmp_path)
  train = read_metrics(tmp_path, 'train')
  evals = read_metrics(tmp_path, 'eval')
  assert [r['step'] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r['loss']) and r['examples_per_sec'] > 0 for r in train)
  assert train[0]['learning_rate'] < train[2]['learning_rate']  # warmup
  assert [r['step'] for r in evals] == [3, 6]
  assert 0 <= evals[-1]['accuracy'] <= 100
  assert result['final'] == {'accuracy': evals[-1]['accuracy']}
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '6']  # keep=2
  assert os.listdir(tmp_path / 'best')
  assert list((tmp_path / 'tensorboard').iterdir())


def subprocess_config(model):
  # Dropout off: its masks depend on how a batch is split over devices. Many small
  # checkpointed steps so a kill lands mid-run.
  config = tiny_config(model, total_steps=24, checkpoint_every=2, eval_every=12)
  config.dropout = 0.0
  return config


@pytest.fixture(scope='module')
def reference_run(tiny_model, tmp_path_factory):
  """An uninterrupted single-device run; its final params as an npz file."""
  out = tmp_path_factory.mktemp('reference')
  run_subprocess(subprocess_config(tiny_model), out / 'workdir', out / 'params.npz')
  return out / 'params.npz'


def assert_same_params(reference, other, **tolerance):
  a, b = np.load(reference), np.load(other)
  assert a.files == b.files
  for key in a.files:
    if tolerance:
      np.testing.assert_allclose(a[key], b[key], err_msg=key, **tolerance)
    else:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def kill_after_checkpoint_then_resume(config, workdir, out, step=4):
  """Starts a run, SIGKILLs it once checkpoint `step` exists, then runs it to the end."""
  proc = run_subprocess(config, workdir, out, wait=False)
  deadline = time.time() + 300
  while not (workdir / 'checkpoints' / str(step)).is_dir():
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
  assert not out.exists()
  run_subprocess(config, workdir, out)


def test_sigkill_and_resume_gives_identical_params(tiny_model, reference_run, tmp_path):
  config = subprocess_config(tiny_model)
  kill_after_checkpoint_then_resume(config, tmp_path / 'killed', tmp_path / 'killed.npz')
  assert_same_params(reference_run, tmp_path / 'killed.npz')  # bit-identical
  final = [json.loads(Path(f'{p}.json').read_text())
           for p in (reference_run, tmp_path / 'killed.npz')]
  assert final[0] == final[1]


def test_a_qat_run_resumes_bit_identically_after_sigkill(tiny_model, tmp_path):
  """Fake quantization lives in the product, not the state: a killed QAT run resumes exactly."""
  config = subprocess_config(tiny_model)
  config.total_steps, config.quant = 8, 'w4,a8'
  run_subprocess(config, tmp_path / 'reference', tmp_path / 'reference.npz')
  kill_after_checkpoint_then_resume(config, tmp_path / 'killed', tmp_path / 'killed.npz')
  assert_same_params(tmp_path / 'reference.npz', tmp_path / 'killed.npz')
  float_run = subprocess_config(tiny_model)
  float_run.total_steps = 8
  run_subprocess(float_run, tmp_path / 'float', tmp_path / 'float.npz')
  a, b = np.load(tmp_path / 'reference.npz'), np.load(tmp_path / 'float.npz')
  assert any(not np.array_equal(a[k], b[k]) for k in a.files)  # QAT changed the training


def test_kills_while_writing_and_at_random_points_resume_bit_identical(tiny_model,
                                                                      reference_run, tmp_path):
  """SIGKILL mid-checkpoint-write, then at random moments: the run still ends the same."""
  config = subprocess_config(tiny_model)
  workdir, out = tmp_path / 'run', tmp_path / 'run.npz'
  proc = run_subprocess(config, workdir, out, env={'KILL_WHILE_WRITING': '6'}, wait=False)
  proc.communicate(timeout=600)
  assert proc.returncode == -signal.SIGKILL
  entries = os.listdir(workdir / 'checkpoints')
  # Step 6 was left half-written (orbax's temporary folder, never renamed); the
  # finalized checkpoints stop at step 4, and only those are read back.
  assert any(e.startswith('6.') and 'tmp' in e for e in entries), entries
  assert sorted(e for e in entries if e.isdigit()) == ['2', '4']
  rng = np.random.default_rng(0)
  for _ in range(3):  # kills at random moments: startup, compiling, stepping or saving
    proc = run_subprocess(config, workdir, out, wait=False)
    time.sleep(rng.uniform(2.0, 12.0))
    if proc.poll() is not None:
      break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  run_subprocess(config, workdir, out)
  assert_same_params(reference_run, out)  # bit-identical
  final = [json.loads(Path(f'{p}.json').read_text()) for p in (reference_run, out)]
  assert final[0] == final[1]


@pytest.mark.parametrize('data, fsdp', [(8, 1), (4, 2)])
def test_eight_devices_match_one_device(tiny_model, reference_run, tmp_path, data, fsdp):
  """Data parallel (8) and FSDP (4 x 2) on forced host devices vs one device."""
  config = subprocess_config(tiny_model)
  config.mesh.data, config.mesh.fsdp = data, fsdp
  run_subprocess(config, tmp_path / 'workdir', tmp_path / 'params.npz',
                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  # Reductions split over devices add in another order: float32 rounding only,
  # grown over 24 Adam steps.
  assert_same_params(reference_run, tmp_path / 'params.npz', atol=1e-4, rtol=1e-3)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model, tmp_path, monkeypatch):
  trainer.train_and_evaluate(tiny_config(tiny_model, total_steps=2, eval_every=2), tmp_path)
  saved = sorted(os.listdir(tmp_path / 'checkpoints'))
  before = {p: p.stat().st_mtime_ns for p in (tmp_path / 'checkpoints').rglob('*')}

  real_loss = Classification.loss
  monkeypatch.setattr(Classification, 'loss',
                      lambda self, logits, batch: tuple(v * np.nan if i == 0 else v
                                                        for i, v in enumerate(real_loss(
                                                            self, logits, batch))))
  with pytest.raises(FloatingPointError, match=r'Loss is nan at step 3.*step 2'):
    trainer.train_and_evaluate(tiny_config(tiny_model, total_steps=4, eval_every=2),
                               tmp_path)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == saved
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / 'checkpoints').rglob('*')} == before


@pytest.mark.parametrize('field, value, message', [
    ('batch_size', 0, 'batch_size must be positive'),
    ('optimizer.learning_rate', -1e-4, 'learning_rate must be >= 0'),
    ('max_length', -5, 'max_length must be positive'),
    ('keep_checkpoints', 0, 'keep_checkpoints must be >= 1'),
    ('max_length', 256, 'exceeds the position table'),
])
def test_bad_config_values_are_named(tiny_model, tmp_path, field, value, message):
  config = tiny_config(tiny_model)
  if '.' in field:
    outer, inner = field.split('.')
    config[outer][inner] = value
  else:
    config[field] = value
  with pytest.raises(ValueError, match=message):
    trainer.train_and_evaluate(config, tmp_path)


def test_unknown_task_is_named(tiny_model, tmp_path):
  with pytest.raises(ValueError, match="sst3"):
    trainer.train_and_evaluate(tiny_config(tiny_model, task='sst3'), tmp_path)


def test_feature_extractor_trains_only_head_and_mix(tiny_model, tmp_path):
  config = tiny_config(tiny_model, total_steps=2, eval_every=2, freeze='feature_extractor',
                       layer_mix='scalar_mix')
  result = trainer.train_and_evaluate(config, tmp_path)
  from research.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
  _, loaded = load_pretrained(tiny_model)
  for got, want in zip(jax.tree.leaves(result['params']['encoder']), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(got), want)
  assert np.abs(np.asarray(result['params']['layer_mix']['weights'])).max() > 0
  assert result['trainable_params'] < result['total_params'] / 100


@pytest.mark.parametrize('task, split, metric', [
    ('conll2003', 'train', 'entity_f1'),
    ('squad', 'train', 'squad_f1'),
])
def test_tagging_and_span_tasks_train_and_score(tiny_model, tmp_path, task, split, metric):
  config = tiny_config(tiny_model, task=task, train_split=split, total_steps=2, eval_every=2,
                       train_examples=32, eval_examples=16)
  config.data_dir = str(DATA)
  config.max_length, config.pad_multiple, config.doc_stride = 128, 128, 32
  result = trainer.train_and_evaluate(config, tmp_path)
  assert metric in result['final'] and 0 <= result['final'][metric] <= 100
  # research/runs/scoring.py (experiments/evaluate.py) re-scores the best checkpoint to the trainer's figure.
  from research.runs import scoring  # pylint: disable=g-import-not-at-top
  rescored = scoring.score_runs([str(tmp_path)])['runs'][str(tmp_path)]
  assert rescored[metric] == pytest.approx(result['best']['score'])


def test_ema_is_evaluated_checkpointed_and_resumed(tiny_model, tmp_path):
  """With ema_decay the returned params are the average, and resuming keeps it exact."""
  config = tiny_config(tiny_model, ema_decay=0.9, dropout=0.0)
  whole = trainer.train_and_evaluate(config, tmp_path / 'whole')
  plain = trainer.train_and_evaluate(tiny_config(tiny_model, dropout=0.0), tmp_path / 'plain')
  averaged, live = jax.tree.leaves(whole['params']), jax.tree.leaves(plain['params'])
  assert any(not np.array_equal(a, b) for a, b in zip(averaged, live))
  # Drop the final checkpoint: the rerun resumes from step 4 and redoes steps 5 and 6.
  shutil.rmtree(tmp_path / 'whole' / 'checkpoints' / '6')
  resumed = trainer.train_and_evaluate(config, tmp_path / 'whole')
  for a, b in zip(averaged, jax.tree.leaves(resumed['params'])):
    np.testing.assert_array_equal(a, b)


def test_config_is_saved_and_a_changed_resume_keeps_the_original(tiny_model, tmp_path):
  config = tiny_config(tiny_model)
  assert run_config.save(config, str(tmp_path)) == str(tmp_path / 'config.json')
  original = (tmp_path / 'config.json').read_text()
  assert json.loads(original)['model'] == tiny_model
  assert run_config.save(config, str(tmp_path)) == str(tmp_path / 'config.json')  # same
  changed = tiny_config(tiny_model, total_steps=12)
  assert run_config.save(changed, str(tmp_path)) == str(tmp_path / 'config.1.json')
  assert (tmp_path / 'config.json').read_text() == original
  assert json.loads((tmp_path / 'config.1.json').read_text())['total_steps'] == 12


def test_evaluate_rescores_saved_runs_and_their_ensemble(tiny_model, tmp_path):
  from research.runs import scoring  # pylint: disable=g-import-not-at-top
  result = trainer.train_and_evaluate(tiny_config(tiny_model, ema_decay=0.9), tmp_path / 'run')
  assert (tmp_path / 'run' / 'config.json').is_file()
  run = str(tmp_path / 'run')
  scores = scoring.score_runs([run])
  # The best checkpoint re-scored from disk gives what the trainer measured for it.
  assert scores['runs'][run]['step'] == result['best']['step']
  assert scores['runs'][run]['accuracy'] == pytest.approx(result['best']['score'])
  assert 'ensemble' not in scores
  # The latest checkpoint holds the EMA, which is what the trainer evaluated at the end.
  latest = scoring.score_runs([run], which='latest')['runs'][run]
  assert latest['step'] == 6 and latest['accuracy'] == pytest.approx(result['final']['accuracy'])
  # An ensemble of a run with itself averages identical outputs: the run's own score.
  both = scoring.score_runs([run, run])
  assert both['ensemble']['accuracy'] == pytest.approx(scores['runs'][run]['accuracy'])

  other = tmp_path / 'other_task'
  shutil.copytree(tmp_path / 'run', other)
  config = json.loads((other / 'config.json').read_text())
  (other / 'config.json').write_text(json.dumps({**config, 'task': 'mrpc'}))
  with pytest.raises(ValueError, match='one task and split'):
    scoring.score_runs([run, str(other)])

  (tmp_path / 'run' / 'config.json').unlink()
  with pytest.raises(FileNotFoundError, match='--config'):
    scoring.score_runs([run])
  assert scoring.score_runs([run], fallback_config=tiny_config(tiny_model))['runs'][run] == \
      scores['runs'][run]


def test_distillation_from_saved_runs(tiny_model, tmp_path):
  """Saved runs as teachers: targets, their cache, the alpha mix and errors."""
  from research.checkpoints import load_tokenizer  # pylint: disable=g-import-not-at-top
  from research.data import tasks  # pylint: disable=g-import-not-at-top
  from research.train import saved_runs, teachers  # pylint: disable=g-import-not-at-top
  from research.transforms import distill  # pylint: disable=g-import-not-at-top
  teacher = tmp_path / 'teacher'
  trainer.train_and_evaluate(tiny_config(tiny_model, dropout=0.0, seed=5), teacher)
  plain = trainer.train_and_evaluate(tiny_config(tiny_model, dropout=0.0), tmp_path / 'plain')

  def student_config(alpha, teachers=f'{teacher},{teacher}'):
    config = tiny_config(tiny_model, dropout=0.0)
    config.distill.teachers, config.distill.checkpoint = teachers, 'latest'
    config.distill.alpha, config.distill.temperature = alpha, 2.0
    return config

  # alpha 0: the targets are built but weigh nothing, so training equals the plain run.
  zero = trainer.train_and_evaluate(student_config(0.0), tmp_path / 'zero')
  for a, b in zip(jax.tree.leaves(plain['params']), jax.tree.leaves(zero['params'])):
    np.testing.assert_array_equal(a, b)
  # The targets are the teacher's softened probabilities on the train features (two
  # copies of one teacher average to that teacher); its outputs are cached once.
  config = student_config(0.0)
  spec = tasks.get_task('sst2')
  tokenizer = load_tokenizer(tiny_model)
  _, features = trainer.load_split(config, spec, tokenizer, 'train', config.train_examples,
                                   training=True)
  probs = saved_runs.run_outputs(saved_runs.load_run(str(teacher), 'latest'), features)
  cached = list((tmp_path / 'zero').glob('teacher_*.npz'))
  assert len(cached) == 1
  np.testing.assert_allclose(np.load(cached[0])['outputs'], probs, rtol=1e-6)
  targets = teachers.soft_targets(config, spec, Classification(), tokenizer, features, str(tmp_path / 'zero'))
  assert targets.shape == (len(features), 2)
  np.testing.assert_allclose(targets, distill.soften(probs, 2.0), rtol=1e-5)
  cached[0].write_bytes(b'not a zip')  # an unreadable cache is a miss, then rewritten
  np.testing.assert_array_equal(
      teachers.soft_targets(config, spec, Classification(), tokenizer, features, str(tmp_path / 'zero')), targets)
  np.testing.assert_allclose(np.load(cached[0])['outputs'], probs, rtol=1e-6)

  # alpha 1: the labels are unused and the run differs. A resumed run, and one with
  # another temperature sharing the cache, do not run the teacher again.
  one = trainer.train_and_evaluate(student_config(1.0), tmp_path / 'one')
  logged = read_metrics(tmp_path / 'one', 'train')[-1]
  assert logged['loss'] == pytest.approx(logged['distill_loss'])  # alpha 1: soft part only
  assert logged['task_loss'] > 0
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(plain['params']), jax.tree.leaves(one['params'])))
  (cache,) = (tmp_path / 'one').glob('teacher_*.npz')
  written = cache.stat().st_mtime_ns
  shutil.rmtree(tmp_path / 'one' / 'checkpoints' / '6')
  resumed = trainer.train_and_evaluate(student_config(1.0), tmp_path / 'one')
  for a, b in zip(jax.tree.leaves(one['params']), jax.tree.leaves(resumed['params'])):
    np.testing.assert_array_equal(a, b)
  hotter = student_config(1.0)
  hotter.distill.temperature, hotter.distill.cache_dir = 4.0, str(tmp_path / 'one')
  trainer.train_and_evaluate(hotter, tmp_path / 'hotter')
  assert cache.stat().st_mtime_ns == written and not list((tmp_path / 'hotter').glob('teacher_*'))

  with pytest.raises(ValueError, match=r'distill.alpha must be in \[0, 1\]'):
    trainer.train_and_evaluate(student_config(1.5), tmp_path / 'bad')
  other = tmp_path / 'other_task'
  shutil.copytree(teacher, other)
  saved = json.loads((other / 'config.json').read_text())
  (other / 'config.json').write_text(json.dumps({**saved, 'task': 'mrpc'}))
  with pytest.raises(ValueError, match='trained on mrpc, the student on sst2'):
    trainer.train_and_evaluate(student_config(0.5, str(other)), tmp_path / 'mismatch')


def test_resuming_under_a_config_that_changes_the_state_is_explained(tiny_model, tmp_path):
  """A finished run's workdir rerun with EMA on (the state gains 'ema'): the error names
  the changed field and keeps the checkpoints."""
  trainer.train_and_evaluate(tiny_config(tiny_model), tmp_path / 'run')
  before = sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir())
  with pytest.raises(ValueError, match=r"cannot be resumed.*ema_decay: 0\.0 -> 0\.9"):
    trainer.train_and_evaluate(tiny_config(tiny_model, ema_decay=0.9), tmp_path / 'run')
  assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()) == before
