"""Several JAX processes as one job: joining them, and what a job does once per job.

    distributed.initialize()   # first line of a script's main, before any JAX call

Reads the environment, as a cluster's launcher sets it:

  RESEARCH_COORDINATOR=host:port  RESEARCH_NUM_PROCESSES=N  RESEARCH_PROCESS_ID=i
      N processes (GPU hosts, or `python -m experiments.launch` on one machine) join
      the coordinator that process 0 runs at host:port.
  RESEARCH_DISTRIBUTED=auto
      `jax.distributed.initialize()` finds the processes itself (TPU pod slices,
      SLURM, Open MPI): nothing else to set.
  RESEARCH_CPU_DEVICES=k        k CPU devices per process (tests and local runs).
  RESEARCH_JOIN_TIMEOUT=s       how long processes wait for each other (default 300).
  RESEARCH_BARRIER_TIMEOUT=s    how long processes wait for process 0's single-host
                                stages (`on_primary`; default 86400).
  RESEARCH_HEARTBEAT_TIMEOUT=s  after how long without a peer's heartbeat JAX's runtime
                                stops the job (default 100; what ends a job whose
                                process died when no launcher is watching).

Nothing set: one process, as before. With explicit addresses the processes first meet
in a small handshake on the coordinator's port, so that a coordinator that never comes,
a process started with another `num_processes` or a duplicate `process_id` stops every
process within the timeout with an error that names it (JAX's own runtime aborts with
DEADLINE_EXCEEDED and a stack trace in those cases). Then JAX's runtime starts on the
same port; on CPU its collectives are gloo's.

Process 0 is the primary: it writes what a job writes once (config.json, metrics,
plots, reports); every process calls the collective parts (jitted steps, orbax saves,
`gather`) in the same order.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import time
from typing import Any, Callable, Mapping

ENV_COORDINATOR = 'RESEARCH_COORDINATOR'
ENV_NUM_PROCESSES = 'RESEARCH_NUM_PROCESSES'
ENV_PROCESS_ID = 'RESEARCH_PROCESS_ID'
ENV_AUTO = 'RESEARCH_DISTRIBUTED'
ENV_CPU_DEVICES = 'RESEARCH_CPU_DEVICES'
ENV_TIMEOUT = 'RESEARCH_JOIN_TIMEOUT'
ENV_HEARTBEAT = 'RESEARCH_HEARTBEAT_TIMEOUT'
ENV_BARRIER = 'RESEARCH_BARRIER_TIMEOUT'
DEFAULT_HEARTBEAT = 100
DEFAULT_TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class Job:
  """Where this process stands: `process_id` of `num_processes` (1 when not distributed)."""
  coordinator: str | None
  num_processes: int
  process_id: int
  cpu_devices: int | None
  timeout: float
  auto: bool = False
  heartbeat: int = DEFAULT_HEARTBEAT
  barrier_timeout: int = 24 * 3600


def job_from_env(env: Mapping[str, str] | None = None) -> Job:
  """The job the environment describes; a clear error for a half or malformed one."""
  env = os.environ if env is None else env

  def integer(name: str, low: int) -> int | None:
    if not env.get(name):
      return None
    try:
      value = int(env[name])
    except ValueError:
      raise ValueError(f'{name}={env[name]!r} is not an integer') from None
    if value < low:
      raise ValueError(f'{name}={value} must be >= {low}')
    return value

  timeout = float(env.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT)
  if timeout <= 0:
    raise ValueError(f'{ENV_TIMEOUT}={timeout} must be > 0 seconds')
  cpu_devices = integer(ENV_CPU_DEVICES, 1)
  heartbeat = integer(ENV_HEARTBEAT, 1) or DEFAULT_HEARTBEAT
  waits = {'heartbeat': heartbeat,
           'barrier_timeout': integer(ENV_BARRIER, 1) or Job.barrier_timeout}
  auto = env.get(ENV_AUTO, '')
  if auto not in ('', 'auto'):
    raise ValueError(f"{ENV_AUTO}={auto!r}: the only value is 'auto'")
  given = {name: env.get(name) for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES,
                                            ENV_PROCESS_ID)}
  if auto:
    if any(given.values()):
      raise ValueError(f'{ENV_AUTO}=auto finds the processes itself; unset '
                       f'{", ".join(k for k, v in given.items() if v)}')
    return Job(None, 0, 0, cpu_devices, timeout, auto=True, **waits)
  if not any(given.values()):
    return Job(None, 1, 0, cpu_devices, timeout, **waits)
  missing = [k for k, v in given.items() if not v]
  if missing:
    raise ValueError(f'A multi-process job needs {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and '
                     f'{ENV_PROCESS_ID}; missing {", ".join(missing)}')
  num, pid = integer(ENV_NUM_PROCESSES, 1), integer(ENV_PROCESS_ID, 0)
  if pid >= num:
    raise ValueError(f'{ENV_PROCESS_ID}={pid} is not below {ENV_NUM_PROCESSES}={num}')
  coordinator = env[ENV_COORDINATOR]
  host, _, port = coordinator.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f"{ENV_COORDINATOR}={coordinator!r} is not 'host:port'")
  return Job(coordinator, num, pid, cpu_devices, timeout, **waits)


_JOINED: Job | None = None


def initialize(env: Mapping[str, str] | None = None) -> Job:
  """Joins this process to its job (once; later calls return the same job).

  Must run before anything touches a JAX backend. Raises `ConnectionError` naming the
  cause when the processes do not all meet within the timeout.
  """
  global _JOINED
  if _JOINED is not None:
    return _JOINED
  job = job_from_env(env)
  import jax  # pylint: disable=g-import-not-at-top
  if job.cpu_devices:
    jax.config.update('jax_num_cpu_devices', job.cpu_devices)
  if job.auto or job.num_processes > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if job.num_processes > 1:
    handshake(job)
    jax.distributed.initialize(job.coordinator, job.num_processes, job.process_id,
                               initialization_timeout=int(max(job.timeout, 1)),
                               heartbeat_timeout_seconds=job.heartbeat)
  elif job.auto:
    jax.distributed.initialize(initialization_timeout=int(max(job.timeout, 1)),
                               heartbeat_timeout_seconds=job.heartbeat)
  if jax.process_index() != 0:  # the primary reports; the others only warn
    logging.getLogger().setLevel(logging.WARNING)
  if jax.process_count() > 1:
    sys.excepthook = _exit_at_once(sys.excepthook)
  _JOINED = job
  return job


def _exit_at_once(report):
  """An uncaught error ends this process at once: at a normal exit JAX's runtime waits
  (minutes) at a shutdown barrier for peers that are themselves waiting in a collective
  for this one; a launcher or scheduler sees the exit and stops the others."""
  def hook(kind, value, traceback):
    report(kind, value, traceback)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access
  return hook


# -- The handshake: every process says who it thinks it is before JAX's runtime starts --

def _send(sock: socket.socket, text: str) -> None:
  sock.sendall(text.encode() + b'\n')


def _receive(sock: socket.socket) -> str:
  data = b''
  while not data.endswith(b'\n'):
    chunk = sock.recv(1024)
    if not chunk:
      break
    data += chunk
  return data.decode().strip()


def handshake(job: Job) -> None:
  """Process 0 listens on the coordinator's port until every other process has said
  '<process_id> <num_processes>'; all agree or all stop, within `job.timeout`."""
  host, _, port = job.coordinator.rpartition(':')
  deadline = time.monotonic() + job.timeout
  if job.process_id == 0:
    _coordinate(int(port), job, deadline)
  else:
    _join(host, int(port), job, deadline)


def _coordinate(port: int, job: Job, deadline: float) -> None:
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    server.bind(('', port))
  except OSError as e:
    raise ConnectionError(f'Process 0 cannot listen on port {port} ({e}): another job '
                          'holds it; pick another coordinator port') from e
  server.listen(job.num_processes)
  peers: dict[int, socket.socket] = {}
  problem = None
  try:
    while len(peers) < job.num_processes - 1 and problem is None:
      left = deadline - time.monotonic()
      if left <= 0:
        missing = sorted(set(range(1, job.num_processes)) - set(peers))
        problem = (f'only {len(peers) + 1} of {job.num_processes} processes joined '
                   f'{job.coordinator} within {job.timeout:g} s; missing process ids '
                   f'{missing}: were they started, with {ENV_COORDINATOR}={job.coordinator}?')
        break
      server.settimeout(left)
      try:
        conn, _ = server.accept()
      except socket.timeout:
        continue
      conn.settimeout(max(deadline - time.monotonic(), 1))
      try:
        pid, num = (int(x) for x in _receive(conn).split())
      except (ValueError, OSError):
        conn.close()
        continue
      if num != job.num_processes:
        problem = (f'process {pid} was started with {ENV_NUM_PROCESSES}={num}, process 0 '
                   f'with {job.num_processes}: every process must be given the same number')
      elif pid in peers or pid == 0:
        problem = f'two processes were started with {ENV_PROCESS_ID}={pid}'
      peers.setdefault(pid, conn)
      if peers.get(pid) is not conn:
        _send(conn, 'error ' + problem)
        conn.close()
    for conn in peers.values():
      try:
        _send(conn, 'error ' + problem if problem else 'ok')
      except OSError:
        pass
      conn.close()
  finally:
    server.close()
  if problem:
    raise ConnectionError(f'Job not started: {problem}')


def _join(host: str, port: int, job: Job, deadline: float) -> None:
  last_error: Any = None
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((host, port), timeout=1.0) as conn:
        _send(conn, f'{job.process_id} {job.num_processes}')
        conn.settimeout(max(deadline - time.monotonic(), 1))
        reply = _receive(conn)
    except OSError as e:  # not listening yet, or gone: try again until the deadline
      last_error = e
      time.sleep(0.2)
      continue
    if reply == 'ok':
      return
    if reply.startswith('error '):
      raise ConnectionError(f'Job not started (process 0 says): {reply[6:]}')
    last_error = f'unexpected reply {reply!r}'
    time.sleep(0.2)
  raise ConnectionError(
      f'Process {job.process_id}: no coordinator answered at {job.coordinator} within '
      f'{job.timeout:g} s ({last_error}); is process 0 running, and is {ENV_COORDINATOR} '
      f'its address? ({ENV_TIMEOUT} sets the wait)')


# -- Once per job --------------------------------------------------------------------

def is_primary() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


_BARRIERS: dict[str, int] = {}


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op for one process).

  Waits on the coordination service, not in a device collective: a peer may spend long
  in a single-host stage (pruning, measuring speed) while the others wait.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  count = _BARRIERS[name] = _BARRIERS.get(name, 0) + 1  # each barrier id is used once
  timeout = (_JOINED or Job(None, 1, 0, None, DEFAULT_TIMEOUT)).barrier_timeout
  jax_distributed.global_state.client.wait_at_barrier(f'research/{name}/{count}',
                                                      timeout * 1000)


def on_primary(name: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
  """`fn(*args, **kwargs)` on process 0 only, for what is single-host by nature
  (writing a run folder from a transform, measuring CPU speed, drawing a plot); every
  process waits until it is done. Returns its value on process 0, None elsewhere."""
  result = fn(*args, **kwargs) if is_primary() else None
  barrier(name)
  return result


def to_host(x: Any) -> Any:
  """A (possibly multi-process) array's whole value as numpy, on every process."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
