"""Every figure the library draws, each written to a PNG whose path is returned.

Each function takes the figures themselves (records, rows, curves), so this module
depends on nothing of the library: `training_curves` (a run's loss, learning rate and
eval metrics, from `research.train.metric_writer.read_metrics`), `pareto` (accuracy
against speed and size of compressed runs), `sixteen_heads` (dev metric as heads are
masked), `loss_vs_batch` (LAMB vs AdamW), `layer_probe` (per-layer probes and the scalar
mix) and `op_class_shares` (`research.evaluate.op_profile` rows).

Figures are drawn with matplotlib's object API (`Figure`, no pyplot), so nothing here
switches the backend of the caller (a notebook's inline display keeps working); show a
written PNG with `IPython.display.Image(path)`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from research import distributed


def training_curves(train: Sequence[dict], evals: Sequence[dict],
                    out: str | os.PathLike) -> str:
  """Writes a PNG with loss, learning rate and eval metrics against step; returns its path.

  Args:
    train: records with 'step', 'loss' and 'learning_rate'.
    evals: records with 'step' and one value per metric.
    out: the PNG's path (folders are created).
  """
  if not train:
    raise ValueError('No training records to plot')
  out = os.fspath(out)
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  fig, axes = _figure(1, 3, figsize=(14, 3.8))
  axes = axes[0]
  steps = [r['step'] for r in train]
  axes[0].plot(steps, [r['loss'] for r in train])
  axes[0].set(title='training loss', xlabel='step')
  axes[1].plot(steps, [r['learning_rate'] for r in train])
  axes[1].set(title='learning rate', xlabel='step')
  names = [k for k in (evals[0] if evals else {}) if k not in ('step', 'split')]
  for name in names:
    axes[2].plot([r['step'] for r in evals], [r[name] for r in evals], marker='o', label=name)
  axes[2].set(title='dev metrics', xlabel='step')
  if names:
    axes[2].legend()
  return _save(fig, out, dpi=100)


def op_class_shares(rows: Sequence[dict], out: str | os.PathLike) -> str:
  """Writes a stacked-bar PNG of op-class shares, a panel per (mode, dtype); returns its path.

  Args:
    rows: `research.evaluate.op_profile.profile` rows with 'mode', 'dtype', 'batch' and
      'length' added; the bars stack the classes in the order of their 'shares'.
    out: the PNG's path (folders are created).
  Raises:
    ImportError: if matplotlib is not installed.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  if not rows:
    raise ValueError('No rows to plot')
  out = os.fspath(out)
  classes = list(rows[0]['shares'])
  panels: dict[tuple, list[dict]] = {}
  for row in rows:
    panels.setdefault((row['mode'], row['dtype']), []).append(row)
  modes = list(dict.fromkeys(r['mode'] for r in rows))
  dtypes = list(dict.fromkeys(r['dtype'] for r in rows))
  bars = max(map(len, panels.values()))
  fig, axes = _figure(len(dtypes), len(modes), sharey=True,
                      figsize=(max(7.5, len(modes) * (0.4 * bars + 1.8)),
                               2.4 * len(dtypes) + 0.6))
  colors = matplotlib.colormaps['tab10'].colors
  for (r, dtype), (c, mode) in ((x, y) for x in enumerate(dtypes) for y in enumerate(modes)):
    ax = axes[r, c]
    group = sorted(panels.get((mode, dtype), []), key=lambda g: (g['batch'], g['length']))
    if not group:
      ax.axis('off')
      continue
    x = np.arange(len(group))
    bottom = np.zeros(len(group))
    for i, cls in enumerate(classes):
      values = np.array([g['shares'][cls] for g in group])
      ax.bar(x, values, bottom=bottom, color=colors[i % len(colors)], label=cls, width=0.8)
      bottom += values
    ax.set_xticks(x, [f'b{g["batch"]}\nL{g["length"]}' for g in group], fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_title(f'{mode}, {dtype}', fontsize=9)
    if c == 0:
      ax.set_ylabel('% of op time')
  handles, labels = next(ax for ax in axes.flat if ax.axison).get_legend_handles_labels()
  fig.legend(handles, labels, ncol=len(classes), fontsize=7, loc='upper center')
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
  return _save(fig, out, tight=False)


def pareto(rows: Sequence[dict], metric: str, batch: int, out: str | os.PathLike,
           title: str = 'each stage of the pipeline') -> str:
  """Dev metric against sequences/s (log) and against MB on disk, one point per model.

  Args:
    rows: `research.runs.measure` rows (model, `metric`, seq_s_b<batch>, bytes_on_disk).
    metric: the dev metric's key.
    batch: which batch size's speed to plot.
    out: the PNG's path.
    title: what the points are.
  """
  fig, axes = _figure(1, 2, figsize=(12, 4.5), sharey=True)
  axes = axes[0]
  for ax, key, label in ((axes[0], f'seq_s_b{batch}', f'sequences/s at batch {batch} (log)'),
                         (axes[1], 'bytes_on_disk', 'MB on disk (log)')):
    for row in rows:
      if metric not in row or key not in row:
        continue
      x = row[key] / (1e6 if key == 'bytes_on_disk' else 1)
      ax.scatter(x, row[metric])
      ax.annotate(row['model'], (x, row[metric]), fontsize=7, xytext=(3, 3),
                  textcoords='offset points')
    ax.set_xscale('log')
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(f'dev {metric}')
  fig.suptitle(f'Accuracy against CPU speed and size, {title}')
  return _save(fig, out, dpi=100)


def sixteen_heads(curve: Sequence[dict], start: float, min_ratio: float, metric: str,
                  out: str | os.PathLike) -> str:
  """Dev metric against the share of heads masked by importance (Michel et al. 2019)."""
  fig, axes = _figure(1, 1, figsize=(5.5, 3.8))
  ax = axes[0, 0]
  ax.plot([100 * c['fraction_removed'] for c in curve], [c['metric'] for c in curve],
          marker='o', label='heads masked by importance')
  ax.axhline(min_ratio * start, color='gray', linestyle='--',
             label=f'{100 * min_ratio:g} % of the unpruned')
  ax.set(xlabel='heads removed (%)', ylabel=f'dev {metric} (%)',
         title='Sixteen Heads: pruning without retraining')
  ax.legend()
  return _save(fig, out, dpi=100)


def loss_vs_batch(rows: Sequence[dict], optimizers: Sequence[str], out: str | os.PathLike,
                  title: str) -> str:
  """Final dev MLM loss against the global batch size, a line per optimizer."""
  fig, axes = _figure(1, 1, figsize=(6, 4))
  ax = axes[0, 0]
  for name in optimizers:
    mine = sorted((r for r in rows if r['optimizer'] == name), key=lambda r: r['batch'])
    ax.plot([r['batch'] for r in mine], [r['mlm_loss'] for r in mine], 'o-', label=name)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('global batch size (same sequences seen)')
  ax.set_ylabel('final dev MLM loss')
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, out)


def layer_probe(result: dict, out: str | os.PathLike) -> str:
  """Dev accuracy of a linear probe per layer (the scalar mix as a line) and the mix's
  learned weights (`research.runs.layer_probe` results)."""
  layers = [r['layer'] for r in result['layers']]
  acc = [r['dev_accuracy'] for r in result['layers']]
  mix = result['mix']
  fig, axes = _figure(1, 2, figsize=(10, 4))
  ax1, ax2 = axes[0]
  ax1.bar(layers, acc, color='tab:blue', label='linear probe on layer')
  ax1.axhline(mix['dev_accuracy'], color='tab:red', linestyle='--',
              label=f'scalar mix ({mix["dev_accuracy"]:.1f})')
  low = min(acc + [mix['dev_accuracy']])
  ax1.set_ylim(max(0.0, low - 5), min(100.0, max(acc + [mix['dev_accuracy']]) + 3))
  for x, a in zip(layers, acc):
    ax1.text(x, a + 0.2, f'{a:.1f}', ha='center', fontsize=8)
  ax1.set_xticks(layers)
  ax1.set_xlabel('layer (0 = embeddings)')
  ax1.set_ylabel('dev accuracy (%)')
  cfg = result['config']
  ax1.set_title(f'{cfg["task"]} linear probes, frozen {cfg["model"]} ({cfg["pooling"]})')
  ax1.legend(loc='lower right', fontsize=8)
  ax2.bar(layers, mix['weights'], color='tab:red')
  ax2.axhline(1.0 / len(layers), color='gray', linestyle=':', label='uniform')
  ax2.set_xticks(layers)
  ax2.set_xlabel('layer (0 = embeddings)')
  ax2.set_ylabel('softmax weight')
  ax2.set_title(f'learned scalar-mix weights (gamma {mix["gamma"]:.2f})')
  ax2.legend(fontsize=8)
  return _save(fig, out)


def _figure(rows: int, cols: int, **kwargs):
  """(Figure, axes [rows, cols]) without pyplot: no backend is chosen or changed."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=kwargs.pop('figsize', None))
  axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
  return fig, axes


def _save(fig, out: str | os.PathLike, dpi: int = 120, tight: bool = True) -> str:
  out = os.fspath(out)
  if not distributed.is_primary():  # one job, one file: process 0 draws it
    return out
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if tight:
    fig.tight_layout()
  fig.savefig(out, dpi=dpi)
  return out
