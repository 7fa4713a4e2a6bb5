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
benchmark). Every mode's last printed line is one JSON object with its figures. The
stages are `research/runs/prune.py`.
"""
from __future__ import annotations

import json

from absl import app, flags

from research import logs
from research.runs import prune

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
flags.DEFINE_integer('throughput_repeats', 10, 'Sixteen Heads: timed rounds.')
flags.mark_flags_as_required(['run', 'out'])


def main(argv):
  del argv
  logs.setup()
  f = flags.FLAGS
  if f.sixteen_heads:
    figures = prune.sixteen_heads(f.run, f.out, f.importance_examples, f.step, f.min_ratio,
                                  f.eval_examples, f.data_dir, f.throughput_batch,
                                  f.throughput_repeats)
    print(f'{figures["heads_prunable"]} of {figures["heads_total"]} heads can go with dev '
          f'{figures["metric"]} {figures["metric_at_point"]:.2f} >= '
          f'{100 * figures["min_ratio"]:g} % of {figures["start"]:.2f}; physically pruned: '
          f'{figures["sequences_per_s_pruned"]:.1f} vs {figures["sequences_per_s_full"]:.1f} '
          f'sequences/s ({figures["speedup"]:.2f}x, batch {figures["throughput_batch"][0]} x '
          f'{figures["throughput_batch"][1]}, {figures["device"]})')
  else:
    figures = prune.prune_run(f.run, f.out, f.heads_fraction, f.ffn_fraction,
                              f.importance_examples, iterative=f.iterative,
                              min_ratio=f.min_ratio, max_rounds=f.max_rounds,
                              eval_examples=f.eval_examples, data_dir=f.data_dir)
  print(json.dumps(figures))


if __name__ == '__main__':
  app.run(main)
