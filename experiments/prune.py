r"""Structured pruning of a saved run (heads and FFN neurons), and the Sixteen Heads curve.

    # Remove the 30 % least important heads and 20 % of FFN neurons (importance from 512
    # train examples, Michel et al. 2019), write a new, smaller run:
    python -m experiments.prune --run runs/sst2_main:best --out runs/sst2_pruned \
        --heads_fraction 0.3 --ffn_fraction 0.2 --importance_examples 512
    # Or in rounds of 10 % of the remaining heads until dev accuracy < 99 % of the start:
    python -m experiments.prune --run runs/sst2_main:best --out runs/sst2_pruned_it \
        --iterative --heads_fraction 0.1 --min_ratio 0.99
    # then a recovery fine-tune, or score / export it as any run:
    python -m experiments.main --config experiments/configs/glue.py:task=sst2 \
        --workdir runs/sst2_pruned_ft --config.init_from=runs/sst2_pruned --config.num_epochs=1
    python -m experiments.evaluate --workdir runs/sst2_pruned

    # Michel, Levy & Neubig 2019, Figure 3: dev accuracy as heads are masked in 10 % steps
    # of importance (computed once, no retraining); writes sixteen_heads.json / .png and
    # the physically pruned run at the last step >= 99 % of the start (out/run):
    python -m experiments.prune --run runs/sst2_main:best --out results/sixteen_heads \
        --sixteen_heads

The Sixteen Heads mode prints how many heads can go while the task's main metric stays
>= min_ratio of the start, and the sequences/s of the physically pruned model at that
point against the unpruned one (same batch, same process; a rough figure, not a
benchmark). Every mode's last printed line is one JSON object with its figures.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from research.data.batching import BatchIterator
from research.evaluate import throughput
from research.train import evaluation, saved_runs
from research.train.build import load_split
from research.transforms import prune, prune_iterative


# A layer may lose every head (its attention block reduces to the output bias); run
# folders hold such layers (checkpointing.py writes their zero-size kernels as None).
_MIN_HEADS = 0


class _Run:
  """A saved run with its tokenizer, an importance sample and the dev split."""

  def __init__(self, ref: str, importance_examples: int, eval_examples: int | None = None,
               data_dir: str | None = None, importance_split: str = 'train'):
    if importance_examples < 1:
      raise ValueError(f'importance_examples must be >= 1, got {importance_examples}')
    self.folder, self.which = saved_runs.parse_ref(ref)
    self.run = saved_runs.load_run(self.folder, self.which)
    self.config = self.run.config.copy_and_resolve_references()
    if data_dir:
      self.config.data_dir = data_dir
    self.tokenizer = saved_runs.run_tokenizer(self.folder, self.config)
    # training=True: span tasks need the answer positions their loss reads.
    _, self.sample = load_split(self.config, self.run.spec, self.tokenizer, importance_split,
                                importance_examples, training=True)
    limit = self.config.eval_examples if eval_examples is None else eval_examples
    self.examples, self.features = load_split(self.config, self.run.spec, self.tokenizer,
                                              self.config.eval_split, limit)
    self.metric = self.run.spec.main_metric
    self._predict = {}

  def batches(self):
    c = self.config
    return BatchIterator(self.sample, c.eval_batch_size, max_length=c.max_length,
                         pad_multiple=c.pad_multiple, num_epochs=1,
                         pad_id=self.tokenizer.pad_token_id or 0)

  def score(self, model, params) -> float:
    """The main dev metric; one compiled predictor per architecture."""
    if model not in self._predict:
      self._predict[model] = evaluation.predict_fn(model)
    c = self.config
    scores = evaluation.evaluate(model, params, self.run.spec, self.examples, self.features,
                                 batch_size=c.eval_batch_size, max_length=c.max_length,
                                 pad_multiple=c.pad_multiple, predict=self._predict[model])
    return float(scores[self.metric])

  def write(self, out: str, model, params, info: dict) -> str:
    return saved_runs.write_run(out, model, params, config=self.run.config,
                                tokenizer=self.tokenizer,
                                info={'transform': 'prune',
                                      'source': f'{self.folder}:{self.which}', **info})


def _layers(config) -> dict[str, Any]:
  return {'heads': [config.heads(i) for i in range(config.num_layers)],
          'ffn': [config.ffn(i) for i in range(config.num_layers)]}


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
  data = _Run(run_ref, importance_examples, eval_examples, data_dir)
  model, params = data.run.model, data.run.params
  before = data.score(model, params)
  curve = None
  if iterative:
    new_model, new_params, curve = prune_iterative.iterative_prune(
        model, params, data.batches, data.score, heads_step=heads_fraction,
        neurons_step=ffn_fraction, min_ratio=min_ratio, max_rounds=max_rounds,
        min_heads_per_layer=_MIN_HEADS)
    after = [c['metric'] for c in curve if c['accepted']][-1]
  else:
    scores = prune.importance(model, params, data.batches())
    heads = sum(prune.set_heads(model.encoder).values())
    neurons = sum(prune.set_widths(model.encoder).values())
    keep_heads = prune.lowest_removed(scores.heads, int(round(heads_fraction * heads)),
                                      _MIN_HEADS)
    keep_neurons = prune.lowest_removed(scores.neurons, int(round(ffn_fraction * neurons)))
    config, new_params = prune.remove(model.encoder, params, keep_heads, keep_neurons)
    new_model = model.clone(encoder=config)
    after = data.score(new_model, new_params)
  summary = {'source': f'{data.folder}:{data.which}', 'out': os.path.abspath(out),
             'metric': data.metric, 'before': before, 'after': after,
             'params_before': prune.count_params(params),
             'params_after': prune.count_params(new_params),
             'layers_before': _layers(model.encoder), 'layers_after': _layers(new_model.encoder)}
  if curve is not None:
    summary['curve'] = curve
  data.write(out, new_model, new_params, {'layers': summary['layers_after'],
                                          'iterative': iterative})
  return summary


def _plot(curve: list[dict], start: float, min_ratio: float, metric: str, path: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  ax.plot([100 * c['fraction_removed'] for c in curve], [c['metric'] for c in curve],
          marker='o', label='heads masked by importance')
  ax.axhline(min_ratio * start, color='gray', linestyle='--',
             label=f'{100 * min_ratio:g} % of the unpruned')
  ax.set(xlabel='heads removed (%)', ylabel=f'dev {metric} (%)',
         title='Sixteen Heads: pruning without retraining')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def sequences_per_second(model, params, batch: int, length: int, repeats: int = 10) -> float:
  """Sequences/s of the model's jitted forward pass on one [batch, length] input."""
  ids = jnp.asarray(np.random.default_rng(0).integers(1000, 2000, (batch, length)), jnp.int32)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, jnp.ones_like(x),
                                             deterministic=True)[0])
  params = jax.device_put(params)
  seconds = throughput.time_fn(lambda: forward(params, ids).block_until_ready(),
                               warmup=2, repeats=repeats)
  return batch / seconds


def sixteen_heads(run_ref: str, out: str, importance_examples: int = 512, step: float = 0.1,
                  min_ratio: float = 0.99, eval_examples: int | None = None,
                  data_dir: str | None = None, throughput_batch: int = 32,
                  throughput_repeats: int = 10) -> dict[str, Any]:
  """Dev metric as heads are masked in `step` fractions of importance; see the docstring."""
  if not 0.0 < step < 1.0:
    raise ValueError(f'step must be in (0, 1), got {step}')
  if not 0.0 < min_ratio <= 1.0:
    raise ValueError(f'min_ratio must be in (0, 1], got {min_ratio}')
  data = _Run(run_ref, importance_examples, eval_examples, data_dir)
  model, params = data.run.model, data.run.params
  scores = prune.importance(model, params, data.batches())  # once, on the full model
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
  full_rate = sequences_per_second(model, params, throughput_batch, length, throughput_repeats)
  small_rate = sequences_per_second(small, pruned, throughput_batch, length, throughput_repeats)
  os.makedirs(out, exist_ok=True)
  heads_left = _layers(config)['heads']
  run_dir = data.write(os.path.join(out, 'run'), small, pruned,
                       {'sixteen_heads': True, 'heads_removed': point['heads_removed']})
  figures = {
      'source': f'{data.folder}:{data.which}', 'metric': data.metric,
      'importance_examples': len(data.sample), 'dev_examples': len(data.features),
      'heads_total': total, 'start': start, 'min_ratio': min_ratio,
      'heads_prunable': point['heads_removed'], 'fraction_prunable': point['fraction_removed'],
      'metric_at_point': point['metric'], 'pruned_metric': pruned_metric,
      'heads_per_layer': heads_left,
      'params_full': prune.count_params(params), 'params_pruned': prune.count_params(pruned),
      'sequences_per_s_full': full_rate, 'sequences_per_s_pruned': small_rate,
      'speedup': small_rate / full_rate, 'throughput_batch': [throughput_batch, length],
      'device': jax.devices()[0].platform, 'run': run_dir}
  json_path = os.path.join(out, 'sixteen_heads.json')
  with open(json_path, 'w') as f:
    json.dump({'figures': figures, 'curve': curve}, f, indent=2)
  figures['curve_json'] = json_path
  figures['plot'] = _plot(curve, start, min_ratio, data.metric,
                          os.path.join(out, 'sixteen_heads.png'))
  print(f'{point["heads_removed"]} of {total} heads can go with dev {data.metric} '
        f'{point["metric"]:.2f} >= {100 * min_ratio:g} % of {start:.2f}; physically pruned: '
        f'{small_rate:.1f} vs {full_rate:.1f} sequences/s ({small_rate / full_rate:.2f}x, '
        f'batch {throughput_batch} x {length}, {figures["device"]})')
  return figures


def main(argv):
  del argv
  logging.getLogger('absl').setLevel(logging.ERROR)  # orbax's per-file messages
  f = flags.FLAGS
  if f.sixteen_heads:
    figures = sixteen_heads(f.run, f.out, f.importance_examples, f.step, f.min_ratio,
                            f.eval_examples, f.data_dir, f.throughput_batch,
                            f.throughput_repeats)
  else:
    figures = prune_run(f.run, f.out, f.heads_fraction, f.ffn_fraction,
                        f.importance_examples, iterative=f.iterative, min_ratio=f.min_ratio,
                        max_rounds=f.max_rounds, eval_examples=f.eval_examples,
                        data_dir=f.data_dir)
  print(json.dumps(figures))


if __name__ == '__main__':
  flags.DEFINE_string('run', None, "The source run, 'folder[:best|:latest]'.")
  flags.DEFINE_string('out', None, 'The new run folder (--sixteen_heads: a results folder).')
  flags.DEFINE_float('heads_fraction', 0.3, 'Heads removed (iterative: per round), [0, 1).')
  flags.DEFINE_float('ffn_fraction', 0.0, 'FFN neurons removed (iterative: per round).')
  flags.DEFINE_integer('importance_examples', 512, 'Train examples scoring importance.')
  flags.DEFINE_integer('eval_examples', None, "Dev examples (default: the run's config).")
  flags.DEFINE_string('data_dir', None, "Data folder (default: the run's config).")
  flags.DEFINE_bool('iterative', False, 'Prune in rounds until the dev metric drops.')
  flags.DEFINE_float('min_ratio', 0.99, 'Stop (or, Sixteen Heads, report) at this fraction '
                     'of the starting dev metric.')
  flags.DEFINE_integer('max_rounds', 100, 'Iterative: at most this many rounds.')
  flags.DEFINE_bool('sixteen_heads', False, 'The ablation curve of Michel et al. 2019.')
  flags.DEFINE_float('step', 0.1, 'Sixteen Heads: fraction of heads masked per step.')
  flags.DEFINE_integer('throughput_batch', 32, 'Sixteen Heads: batch of the speed check.')
  flags.DEFINE_integer('throughput_repeats', 10, 'Sixteen Heads: timed repeats.')
  flags.mark_flags_as_required(['run', 'out'])
  app.run(main)
