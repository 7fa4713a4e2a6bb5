"""N processes of one command on this machine, joined as one JAX job.

    code = launch(['python', '-m', 'experiments.main', ...], processes=2, cpu_devices=2)

What `torchrun` or a cluster's launcher does, for one machine: each process gets the
job's environment (`research.distributed`: coordinator, count, id, CPU devices) and
`distributed.initialize()` in the command joins them. The launcher watches them: when
one fails or is killed, the others are stopped (SIGTERM, then SIGKILL after `grace`
seconds) rather than left waiting in a collective for a peer that is gone, and the
launcher returns that process's exit code; a rerun of the same command resumes from the
last checkpoint the job completed. Ctrl-C stops every process.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from typing import Mapping, Sequence

from research import distributed


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('', 0))
    return s.getsockname()[1]


def process_env(process_id: int, processes: int, port: int, cpu_devices: int | None,
                timeout: float | None, base: Mapping[str, str]) -> dict[str, str]:
  env = {k: v for k, v in base.items() if k != distributed.ENV_AUTO}
  env.update({distributed.ENV_COORDINATOR: f'localhost:{port}',
              distributed.ENV_NUM_PROCESSES: str(processes),
              distributed.ENV_PROCESS_ID: str(process_id)})
  if cpu_devices:
    env[distributed.ENV_CPU_DEVICES] = str(cpu_devices)
  if timeout:
    env[distributed.ENV_TIMEOUT] = str(timeout)
  return env


def _stop(procs: Sequence[subprocess.Popen], grace: float) -> None:
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace
  while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
    time.sleep(0.05)
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def launch(command: Sequence[str], processes: int, *, cpu_devices: int | None = None,
           port: int | None = None, timeout: float | None = None, grace: float = 10.0,
           env: Mapping[str, str] | None = None, started=None) -> int:
  """Runs `processes` copies of `command` as one job; returns the job's exit code.

  Args:
    command: the program and its arguments (it must call `distributed.initialize()`).
    processes: how many processes.
    cpu_devices: CPU devices per process (None: the backend's default).
    port: the coordinator's port on localhost (None: a free one).
    timeout: seconds the processes wait for each other to start (None: the default).
    grace: seconds between SIGTERM and SIGKILL when the job is stopped.
    env: the processes' base environment (None: this one's).
    started: called with the list of `subprocess.Popen` once all are started.

  Returns:
    0 when every process succeeded; else the first failure's exit code (negative: the
    signal that killed it, as `subprocess` reports it).
  """
  if processes < 1:
    raise ValueError(f'processes={processes} must be >= 1')
  if not command:
    raise ValueError('No command to launch')
  port = port or free_port()
  base = dict(os.environ if env is None else env)
  procs = [subprocess.Popen(list(command), env=process_env(i, processes, port, cpu_devices,
                                                           timeout, base))
           for i in range(processes)]
  if started is not None:
    started(procs)
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
      if failed is not None:
        logging.warning('Process %d exited with %d: stopping the other %d', failed,
                        codes[failed], sum(c is None for c in codes))
        _stop(procs, grace)
        return codes[failed]
      if all(c == 0 for c in codes):
        return 0
      time.sleep(0.1)
  except KeyboardInterrupt:
    _stop(procs, grace)
    raise
