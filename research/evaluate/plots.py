"""Plots of a run's metrics.jsonl: training loss / learning rate and the eval metrics."""
from __future__ import annotations

import os

from research.train.metric_writer import read_metrics


def training_curves(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
  """Writes a PNG with loss, learning rate and eval metrics against step; returns its path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  train, evals = read_metrics(workdir, 'train'), read_metrics(workdir, 'eval')
  if not train:
    raise FileNotFoundError(f'No training metrics in {workdir}/metrics.jsonl')
  out = os.fspath(out or os.path.join(os.fspath(workdir), 'plots', 'training_curves.png'))
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  steps = [r['step'] for r in train]
  axes[0].plot(steps, [r['loss'] for r in train])
  axes[0].set(title='training loss', xlabel='step')
  axes[1].plot(steps, [r['learning_rate'] for r in train])
  axes[1].set(title='learning rate', xlabel='step')
  names = [k for k in (evals[0] if evals else {}) if k not in ('step', 'split')]
  for name in names:
    axes[2].plot([r['step'] for r in evals], [r[name] for r in evals], marker='o', label=name)
  axes[2].set(title='dev metrics (%)', xlabel='step')
  if names:
    axes[2].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
