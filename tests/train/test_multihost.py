"""Several JAX processes as one job, on this machine: 2 processes x 2 CPU devices against
1 process x 4 devices on the same global batch (fine-tuning with data parallelism,
masked-LM pre-training with FSDP across the processes, in-step distillation on a
data x FSDP mesh); a process killed mid-run; processes that cannot meet."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from research import distributed
from research.launch import launch
from research.train import trainer
from research.train.metric_writer import read_metrics

from tests.train.test_kill_anywhere import corpus, pretrain_config, task_config  # pylint: disable=unused-import

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name('run_multihost.py')
TIMEOUT = 600


def config_for(kind, tiny_model, synthetic_root, corpus_path, teacher):
  if kind == 'mlm_fsdp':
    c = pretrain_config(tiny_model, corpus_path, 'mlm')
    c.mesh.data, c.mesh.fsdp = 1, 4  # every parameter split over both processes
    return c
  c = task_config(tiny_model, synthetic_root)
  c.eval_examples, c.eval_batch_size = 20, 8  # 8 + 8 + 4: an uneven last batch
  c.dropout = 0.1  # the dropout masks of each process's rows must match one process's
  if kind == 'distill_in_step':
    c.init_from = f'{teacher}:best'
    c.distill.teachers, c.distill.mode = teacher, 'in_step'
    c.distill.hidden_weight = c.distill.attention_weight = 1.0
    c.mesh.data, c.mesh.fsdp = 2, 2
  return c


def run_job(config, workdir: Path, processes: int, devices: int, started=None):
  """The runner as `processes` x `devices`; returns the launcher's exit code."""
  config_path = workdir.with_suffix('.config.json')
  config_path.write_text(config.to_json())
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return launch([sys.executable, str(RUNNER), str(config_path), str(workdir),
                 str(workdir.with_suffix(''))], processes, cpu_devices=devices, timeout=120,
                env=env, started=started)


def outputs(workdir: Path):
  prefix = workdir.with_suffix('')
  reads = sorted(Path(prefix.parent).glob(prefix.name + '.p*.json'))
  return np.load(str(prefix) + '.npz'), [json.loads(p.read_text()) for p in reads]


@pytest.fixture(scope='module')
def teacher(tiny_model, synthetic_root, tmp_path_factory):
  folder = tmp_path_factory.mktemp('teacher') / 'run'
  trainer.train_and_evaluate(task_config(tiny_model, synthetic_root), folder)
  return str(folder)


@pytest.fixture(scope='module')
def jobs(tiny_model, synthetic_root, corpus, teacher, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """Each kind run as 1 x 4 and as 2 x 2 (computed once for the module)."""
  done = {}

  def get(kind):
    if kind not in done:
      config = config_for(kind, tiny_model, synthetic_root, corpus, teacher)
      root = tmp_path_factory.mktemp(kind)
      for name, processes, devices in (('one', 1, 4), ('two', 2, 2)):
        assert run_job(config, root / name, processes, devices) == 0, kind
      done[kind] = (config, root)
    return done[kind]
  return get


@pytest.mark.parametrize('kind', ['finetune', 'mlm_fsdp', 'distill_in_step'])
def test_two_processes_train_as_one(kind, jobs):
  config, root = jobs(kind)
  one_params, (one,) = outputs(root / 'one')
  two_params, reads = outputs(root / 'two')
  assert [r['process_count'] for r in reads] == [2, 2] and one['process_count'] == 1
  assert one['devices'] == reads[0]['devices'] == 4
  # Each process read only its half of every global batch, in order, and nothing else.
  assert len(one['batches']) == config.total_steps
  for step, whole in enumerate(one['batches']):
    halves = [r['batches'][step] for r in reads]
    assert halves == [whole[:len(whole) // 2], whole[len(whole) // 2:]], step
  # The same loss curve, evaluation and final params.
  for split in ('train', 'eval'):
    a, b = read_metrics(root / 'one', split), read_metrics(root / 'two', split)
    assert [r['step'] for r in a] == [r['step'] for r in b]  # written once per step
    for ra, rb in zip(a, b):
      for key in ra:
        if key not in ('step', 'split', 'examples_per_sec'):
          np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, atol=1e-6,
                                     err_msg=f'{split} {key} at step {ra["step"]}')
  assert sorted(one_params.files) == sorted(two_params.files)
  for key in one_params.files:  # sums over 2 x 2 and 1 x 4 devices round differently
    np.testing.assert_allclose(two_params[key], one_params[key], rtol=1e-4, atol=1e-5,
                               err_msg=key)
  # What a job writes once: one config, one event file, one best checkpoint.
  assert json.loads((root / 'two' / 'config.json').read_text())['seed'] == config.seed
  assert len(list((root / 'two' / 'tensorboard').iterdir())) == 1
  assert os.listdir(root / 'two' / 'best') == os.listdir(root / 'one' / 'best')


def test_a_killed_process_stops_the_job_and_the_rerun_resumes(jobs, tmp_path):
  """SIGKILL process 1 once checkpoint 4 exists: the launcher stops process 0 within
  seconds, and the rerun of both resumes from step 4 and ends where an uninterrupted
  two-process run ends, bit for bit."""
  config, root = jobs('finetune')
  workdir = tmp_path / 'killed'
  procs, result = [], {}

  def run():
    result['code'] = run_job(config, workdir, 2, 2, started=procs.extend)

  thread = threading.Thread(target=run)
  thread.start()
  deadline = time.time() + TIMEOUT
  while not (workdir / 'checkpoints' / '4').is_dir():
    assert thread.is_alive() and time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  thread.join(timeout=60)
  assert not thread.is_alive(), 'the job did not stop within 60 s of the kill'
  assert result['code'] == -signal.SIGKILL
  assert all(p.poll() is not None for p in procs)
  print(f'job stopped {time.time() - killed_at:.1f} s after the kill')
  steps = sorted(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit())
  assert steps and steps[-1] < config.total_steps
  assert run_job(config, workdir, 2, 2) == 0
  resumed, _ = outputs(workdir)
  uninterrupted, _ = outputs(root / 'two')
  for key in uninterrupted.files:
    np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)
  train = read_metrics(workdir, 'train')
  assert train[-1]['step'] == config.total_steps


def test_without_a_launcher_the_heartbeat_stops_the_job(tiny_model, synthetic_root, tmp_path):
  """On a cluster nobody may be watching: a peer killed mid-run stops the others within
  RESEARCH_HEARTBEAT_TIMEOUT (JAX's runtime aborts them), never a hang."""
  config = task_config(tiny_model, synthetic_root)
  config.total_steps, config.checkpoint_every, config.eval_every = 400, 2, 400
  path, workdir = tmp_path / 'config.json', tmp_path / 'run'
  path.write_text(config.to_json())
  port = distributed_port()
  procs = []
  for i in range(2):
    env = {**{k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'},
           distributed.ENV_COORDINATOR: f'localhost:{port}',
           distributed.ENV_NUM_PROCESSES: '2', distributed.ENV_PROCESS_ID: str(i),
           distributed.ENV_CPU_DEVICES: '2', distributed.ENV_HEARTBEAT: '10'}
    procs.append(subprocess.Popen([sys.executable, str(RUNNER), str(path), str(workdir),
                                   str(tmp_path / 'out')], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
  deadline = time.time() + TIMEOUT
  while not (workdir / 'checkpoints' / '4').is_dir():
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.05)
  procs[1].kill()
  start = time.time()
  procs[0].wait(timeout=60)
  assert procs[0].returncode != 0
  print(f'process 0 stopped {time.time() - start:.1f} s after process 1 was killed')


def test_the_cli_runs_main_as_two_processes(tiny_model, synthetic_root, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  workdir = tmp_path / 'run'
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.launch', '--processes', '2', '--cpu_devices', '2',
       '--', sys.executable, '-m', 'experiments.main',
       '--config', 'experiments/configs/glue.py:task=sst2,runlocal', '--workdir', str(workdir),
       f'--config.model={tiny_model}', f'--config.data_dir={synthetic_root}/glue',
       '--config.total_steps=4', '--config.eval_every=2', '--config.train_examples=64',
       '--config.eval_examples=20', '--config.batch_size=8', '--config.eval_batch_size=8',
       '--config.max_length=32', '--config.pad_multiple=32'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count('"final"') == 1, out.stdout  # the summary, from process 0 only
  assert (workdir / 'plots' / 'training_curves.png').is_file()
  assert [r['step'] for r in read_metrics(workdir, 'eval')] == [2, 4]


# -- Processes that cannot meet: a clear error within the timeout, never a hang -------

def join(process_id: int, processes: int, port: int, timeout: float = 4):
  env = {**os.environ, distributed.ENV_COORDINATOR: f'localhost:{port}',
         distributed.ENV_NUM_PROCESSES: str(processes),
         distributed.ENV_PROCESS_ID: str(process_id), distributed.ENV_TIMEOUT: str(timeout)}
  return subprocess.Popen([sys.executable, '-c',
                           'from research import distributed; distributed.initialize()'],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(*procs, within: float = 60):
  start = time.time()
  errors = [p.communicate(timeout=within)[1] for p in procs]
  assert time.time() - start < within
  assert all(p.returncode != 0 for p in procs)
  return errors


def test_a_coordinator_that_never_comes():
  (err,) = finish(join(1, 2, distributed_port()))
  assert 'no coordinator answered' in err and 'is process 0 running' in err, err


def test_a_missing_process():
  (err,) = finish(join(0, 2, distributed_port()))
  assert 'only 1 of 2 processes joined' in err and 'missing process ids [1]' in err, err


def test_processes_that_disagree_on_the_count():
  port = distributed_port()
  errors = finish(join(0, 2, port, timeout=20), join(1, 3, port, timeout=20))
  for err in errors:
    assert 'started with RESEARCH_NUM_PROCESSES=3, process 0 with 2' in err, err


def test_two_processes_with_one_id():
  port = distributed_port()
  errors = finish(join(0, 3, port, timeout=20), join(1, 3, port, timeout=20),
                  join(1, 3, port, timeout=20))
  for err in errors:
    assert 'two processes were started with RESEARCH_PROCESS_ID=1' in err, err


def distributed_port():
  from research.launch import free_port  # pylint: disable=g-import-not-at-top
  return free_port()


@pytest.mark.parametrize('env, message', [
    ({distributed.ENV_NUM_PROCESSES: '2'}, 'missing RESEARCH_COORDINATOR, RESEARCH_PROCESS_ID'),
    ({distributed.ENV_COORDINATOR: 'localhost', distributed.ENV_NUM_PROCESSES: '2',
      distributed.ENV_PROCESS_ID: '0'}, "is not 'host:port'"),
    ({distributed.ENV_COORDINATOR: 'h:1', distributed.ENV_NUM_PROCESSES: '2',
      distributed.ENV_PROCESS_ID: '2'}, 'is not below RESEARCH_NUM_PROCESSES=2'),
    ({distributed.ENV_COORDINATOR: 'h:1', distributed.ENV_NUM_PROCESSES: 'two',
      distributed.ENV_PROCESS_ID: '0'}, "RESEARCH_NUM_PROCESSES='two' is not an integer"),
    ({distributed.ENV_AUTO: 'yes'}, "the only value is 'auto'"),
    ({distributed.ENV_AUTO: 'auto', distributed.ENV_PROCESS_ID: '0'}, 'unset RESEARCH_PROCESS_ID'),
    ({distributed.ENV_TIMEOUT: '0'}, 'must be > 0 seconds'),
    ({distributed.ENV_HEARTBEAT: '0'}, 'RESEARCH_HEARTBEAT_TIMEOUT=0 must be >= 1'),
    ({distributed.ENV_BARRIER: '-5'}, 'RESEARCH_BARRIER_TIMEOUT=-5 must be >= 1'),
])
def test_a_malformed_job_environment(env, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(')):
    distributed.job_from_env(env)


def test_no_environment_is_one_process():
  job = distributed.job_from_env({})
  assert (job.num_processes, job.process_id, job.coordinator) == (1, 0, None)


def test_the_launcher_stops_the_others_when_one_fails():
  start = time.time()
  code = launch([sys.executable, '-c',
                 'import os, sys, time\n'
                 'if os.environ["RESEARCH_PROCESS_ID"] == "1": sys.exit(3)\n'
                 'time.sleep(600)'], 2, grace=2)
  assert code == 3 and time.time() - start < 30
