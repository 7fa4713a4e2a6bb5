"""Plots of a run's metrics: training loss / learning rate and the eval metrics.

Takes the records themselves (`research.train.metric_writer.read_metrics` reads them
from a run's metrics.jsonl), so this module does not depend on the trainer.
"""
from __future__ import annotations

import os
from typing import Sequence


def training_curves(train: Sequence[dict], evals: Sequence[dict],
                    out: str | os.PathLike) -> str:
  """Writes a PNG with loss, learning rate and eval metrics against step; returns its path.

  Args:
    train: records with 'step', 'loss' and 'learning_rate'.
    evals: records with 'step' and one value per metric.
    out: the PNG's path (folders are created).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if not train:
    raise ValueError('No training records to plot')
  out = os.fspath(out)
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
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
