"""Writes scalar metrics to a JSONL file and to TensorBoard event files.

Each line of `<workdir>/metrics.jsonl` is {"step": N, "split": "train"|"eval", ...}.
TensorBoard files go to `<workdir>/tensorboard` (written with tensorboardX, which
needs no TensorFlow). Only process 0 writes.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import jax


class MetricWriter:
  """Appends metrics; safe to reopen after a resume (the JSONL file is appended to)."""

  def __init__(self, workdir: str | os.PathLike):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(os.fspath(workdir), 'metrics.jsonl')
    self._tb = None
    if self.enabled:
      os.makedirs(os.fspath(workdir), exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(os.fspath(workdir), 'tensorboard'))

  def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in values.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for key, value in values.items():
      self._tb.add_scalar(f'{split}/{key}', float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict]:
  """The records of `metrics.jsonl`, optionally of one split."""
  path = os.path.join(os.fspath(workdir), 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if split is None or r['split'] == split]
