"""Reading runs says nothing a user need not act on: orbax's notice for every read-only
checkpoint manager is dropped (run folders are opened read-only on purpose)."""
from __future__ import annotations

import logging

from research.runs import run_data
from research.train import saved_runs


def test_loading_and_measuring_runs_logs_no_read_only_notices(make_tiny_run, caplog):
  run = make_tiny_run(1)
  with caplog.at_level(logging.INFO):
    saved_runs.load_run(run)
    saved_runs.checkpoint_step(run, 'best')
    run_data.load(f'{run}:best').score(*(lambda r: (r.model, r.params))(
        saved_runs.load_run(run)))
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
      r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
