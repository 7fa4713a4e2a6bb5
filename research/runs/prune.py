"""Structured pruning of a saved run (heads and FFN neurons), and the Sixteen Heads curve.

    summary = prune_run('runs/sst2:best', 'runs/pruned', heads_fraction=0.3, ffn_fraction=0.2)
    summary = prune_run(..., iterative=True, heads_fraction=0.1, min_ratio=0.99)
    figures = sixteen_heads('runs/sst2:best', 'results/sixteen_heads')

Importance (Michel, Levy & Neubig 2019) is the mean absolute gradient of the loss with
respect to a gate on each head's (and FFN neuron's) output, on a sample of the run's
train split; the least important are removed physically (`transforms/prune.remove`:
per-layer head and FFN sizes, a layer may keep no heads), and the smaller model is
written as a run. Sixteen Heads masks heads in steps of importance without retraining
and reports how many can go while the dev metric stays >= `min_ratio` of the start.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np

from research.evaluate import plots, speed
from research.models.sizes import count_params
from research.runs import run_data
from research.transforms import prune, prune_iterative

# A layer may lose every head (its attention block reduces to the output bias); run
# folders hold such layers (checkpointing.py writes their zero-size kernels as None).
_MIN_HEADS = 0


def _layers(config) -> dict[str, Any]:
  return {'heads': [config.heads(i) for i in range(config.num_layers)],
          'ffn': [config.ffn(i) for i in range(config.num_layers)]}


def _load(run_ref: str, importance_examples: int, eval_examples, data_dir):
  """(run data, importance sample: train features encoded with what the loss reads)."""
  if importance_examples < 1:
    raise ValueError(f'importance_examples must be >= 1, got {importance_examples}')
  data = run_data.load(run_ref, data_dir=data_dir, eval_examples=eval_examples)
  _, sample = data.split(data.config.train_split, importance_examples, training=True)
  return data, sample


def prune_run(run_ref: str, out: str, heads_fraction: float = 0.3, ffn_fraction: float = 0.0,
              importance_examples: int = 512, *, iterative: bool = False,
              min_ratio: float = 0.99, max_rounds: int = 100, eval_examples: int | None = None,
              data_dir: str | None = None) -> dict[str, Any]:
  """Prunes a run by importance and writes the smaller model as a new run.

  One shot: the `heads_fraction` least important heads and `ffn_fraction` of the FFN
  neurons (ranked over all layers) go at once. Iterative: rounds of those fractions of
  what remains, importance recomputed each round, until the dev metric falls below
  `min_ratio` of the start (`prune_iterative.iterative_prune`).
  """
  for name, value in (('heads_fraction', heads_fraction), ('ffn_fraction', ffn_fraction)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f'{name} must be in [0, 1), got {value}')
  data, sample = _load(run_ref, importance_examples, eval_examples, data_dir)
  model, params = data.run.model, data.run.params
  before = data.score(model, params)
  curve = None
  if iterative:
    new_model, new_params, curve = prune_iterative.iterative_prune(
        model, params, lambda: data.batches(sample), data.score, heads_step=heads_fraction,
        neurons_step=ffn_fraction, min_ratio=min_ratio, max_rounds=max_rounds,
        min_heads_per_layer=_MIN_HEADS)
    after = [c['metric'] for c in curve if c['accepted']][-1]
  else:
    scores = prune.importance(model, params, data.batches(sample))
    heads = sum(prune.set_heads(model.encoder).values())
    neurons = sum(prune.set_widths(model.encoder).values())
    keep_heads = prune.lowest_removed(scores.heads, int(round(heads_fraction * heads)),
                                      _MIN_HEADS)
    keep_neurons = prune.lowest_removed(scores.neurons, int(round(ffn_fraction * neurons)))
    config, new_params = prune.remove(model.encoder, params, keep_heads, keep_neurons)
    new_model = model.clone(encoder=config)
    after = data.score(new_model, new_params)
  summary = {'source': data.ref, 'out': os.path.abspath(out), 'metric': data.metric,
             'before': before, 'after': after, 'params_before': count_params(params),
             'params_after': count_params(new_params), 'layers_before': _layers(model.encoder),
             'layers_after': _layers(new_model.encoder)}
  if curve is not None:
    summary['curve'] = curve
  data.write(out, new_model, new_params, {'transform': 'prune', 'iterative': iterative,
                                          'layers': summary['layers_after']})
  return summary


def sequences_per_second(models: dict[str, tuple[Any, Any]], batch: int, length: int,
                         rounds: int = 10) -> dict[str, float]:
  """Sequences/s of each (model, params) on one random [batch, length] input, timed
  side by side (`speed.sequences_per_second`)."""
  batches = speed.synthetic_batches(batch, length)
  runners = {name: speed.runner(model, params) for name, (model, params) in models.items()}
  return speed.sequences_per_second(runners, batches, rounds)


def sixteen_heads(run_ref: str, out: str, importance_examples: int = 512, step: float = 0.1,
                  min_ratio: float = 0.99, eval_examples: int | None = None,
                  data_dir: str | None = None, throughput_batch: int = 32,
                  throughput_repeats: int = 10) -> dict[str, Any]:
  """Dev metric as heads are masked in `step` fractions of importance (Michel et al. 2019,
  Figure 3), computed once, no retraining. Writes sixteen_heads.json / .png and the
  physically pruned run at the last step >= `min_ratio` of the start (out/run); returns
  the figures (with the pruned model's sequences/s against the unpruned one's)."""
  if not 0.0 < step < 1.0:
    raise ValueError(f'step must be in (0, 1), got {step}')
  if not 0.0 < min_ratio <= 1.0:
    raise ValueError(f'min_ratio must be in (0, 1], got {min_ratio}')
  data, sample = _load(run_ref, importance_examples, eval_examples, data_dir)
  model, params = data.run.model, data.run.params
  scores = prune.importance(model, params, data.batches(sample))  # once, on the full model
  total = sum(prune.set_heads(model.encoder).values())
  counts = sorted({min(int(round(k * step * total)), total - 1)
                   for k in range(int(np.floor(1 / step + 1e-9)) + 1)})
  curve = []
  for removed in counts:
    masked = prune.mask_heads(model.encoder, params, prune.lowest_removed(scores.heads, removed))
    curve.append({'heads_removed': removed, 'fraction_removed': removed / total,
                  'heads_left': total - removed, 'metric': data.score(model, masked)})
    logging.info('%d of %d heads masked: %s %.2f', removed, total, data.metric,
                 curve[-1]['metric'])
  start = curve[0]['metric']
  point = curve[0]
  for row in curve:  # the last step of the run of steps that all keep the metric
    if row['metric'] < min_ratio * start:
      break
    point = row
  keep = prune.lowest_removed(scores.heads, point['heads_removed'])
  config, pruned = prune.remove(model.encoder, params, keep)
  small = model.clone(encoder=config)
  pruned_metric = data.score(small, pruned)  # the masked model's, up to float rounding
  length = data.config.max_length
  rates = sequences_per_second({'full': (model, params), 'pruned': (small, pruned)},
                               throughput_batch, length, throughput_repeats)
  os.makedirs(out, exist_ok=True)
  run_dir = data.write(os.path.join(out, 'run'), small, pruned,
                       {'transform': 'prune', 'sixteen_heads': True,
                        'heads_removed': point['heads_removed']})
  figures = {
      'source': data.ref, 'metric': data.metric, 'importance_examples': len(sample),
      'dev_examples': len(data.dev[1]), 'heads_total': total, 'start': start,
      'min_ratio': min_ratio, 'heads_prunable': point['heads_removed'],
      'fraction_prunable': point['fraction_removed'], 'metric_at_point': point['metric'],
      'pruned_metric': pruned_metric, 'heads_per_layer': _layers(config)['heads'],
      'params_full': count_params(params), 'params_pruned': count_params(pruned),
      'sequences_per_s_full': rates['full'], 'sequences_per_s_pruned': rates['pruned'],
      'speedup': rates['pruned'] / rates['full'], 'throughput_batch': [throughput_batch, length],
      'device': jax.devices()[0].platform, 'run': run_dir}
  json_path = os.path.join(out, 'sixteen_heads.json')
  with open(json_path, 'w') as f:
    json.dump({'figures': figures, 'curve': curve}, f, indent=2)
  figures['curve_json'] = json_path
  figures['curve'] = curve
  figures['plot'] = plots.sixteen_heads(curve, start, min_ratio, data.metric,
                                        os.path.join(out, 'sixteen_heads.png'))
  return figures
