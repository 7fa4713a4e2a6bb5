r"""Runs a command as N JAX processes on this machine, joined as one job.

    python -m experiments.launch --processes 2 --cpu_devices 2 -- \
        python -m experiments.main --config experiments/configs/glue.py:task=sst2,runlocal \
        --workdir /tmp/sst2_2proc

Every script that trains or compresses calls `research.distributed.initialize()`, so
the same command runs as one process, as N here, or on a cluster whose launcher sets
the environment (BUILD.md, "Several processes"). When one process fails or is killed
the others are stopped; rerun the same command to resume from the last checkpoint.
"""
from __future__ import annotations

import sys

from absl import app, flags

from research import logs
from research.launch import launch

_PROCESSES = flags.DEFINE_integer('processes', 2, 'How many processes.')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', None,
                                    'CPU devices per process (default: the backend\'s).')
_PORT = flags.DEFINE_integer('port', None, 'Coordinator port on localhost (default: free).')
_TIMEOUT = flags.DEFINE_float('timeout', None,
                              'Seconds the processes wait for each other to start.')


def main(argv):
  logs.setup()
  command = argv[1:]
  if not command:
    raise app.UsageError('Give the command after --, e.g. -- python -m experiments.main ...')
  code = launch(command, _PROCESSES.value, cpu_devices=_CPU_DEVICES.value,
                port=_PORT.value, timeout=_TIMEOUT.value)
  sys.exit(128 - code if code < 0 else code)  # killed by signal n: the shell's 128 + n


if __name__ == '__main__':
  app.run(main)
