r"""Applies a structural transform to a saved run and writes the result as a new run.

    python -m experiments.transform --run runs/sst2:best --out runs/sst2_r64 \
        --transform low_rank --rank 64                    # or --energy 0.9
    python -m experiments.transform --run runs/sst2:best --out runs/sst2_e128 \
        --transform embeddings --embedding_size 128     # factorised embedding tables
    python -m experiments.transform --run runs/sst2:best --out runs/sst2_shared \
        --transform share --parts attention --groups 1
    python -m experiments.transform --run runs/sst2:best --out runs/sst2_int8 \
        --transform ptq --calibration mse --calibration_examples 512    # int8 (--bits 4)
    python -m experiments.transform --run runs/sst2:best --out runs/student \
        --transform select_layers --layers 0,2,4                # a student: every other layer
    python -m experiments.transform --run runs/student --out runs/student_narrow \
        --transform truncate_width --num_heads 6 --intermediate_size 1536 --hidden_size 384
    # distil into the student (intermediates need the teacher in the step):
    python -m experiments.main --config experiments/configs/glue.py:task=sst2 \
        --workdir runs/student_ft --config.init_from=runs/student \
        --config.distill.teachers=runs/sst2 --config.distill.mode=in_step \
        --config.distill.hidden_weight=1 --config.distill.attention_weight=1
    # then a short recovery fine-tune from the new run:
    python -m experiments.main --config experiments/configs/glue.py:task=sst2 \
        --workdir runs/sst2_r64_ft --config.init_from=runs/sst2_r64 --config.num_epochs=1

The new run folder holds its own architecture (model.json: the factorized projections
or the sharing maps), the transformed params, the source's config and tokenizer, so
evaluation, export and `init_from` work on it as on any run. Prints the parameter
counts before and after (and, for low rank, each site's rank and kept energy).
"""
from __future__ import annotations

import json
import os
from typing import Any

from absl import app, flags
import jax
import numpy as np

from research.data.batching import BatchIterator
from research.train import saved_runs
from research.train.build import load_split
from research.transforms import low_rank, quantize, share, student_init

TRANSFORMS = ('low_rank', 'embeddings', 'share', 'ptq', 'select_layers', 'truncate_width')


def count(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def transform_run(run_ref: str, out: str, transform: str, rank: int | None = None,
                  energy: float | None = None, sites: str = low_rank.PROJECTIONS,
                  groups: int = 1, parts: str = 'all', calibration: str = 'max',
                  calibration_examples: int = 512, bits: int = 8,
                  embedding_size: int | None = None, layers: str = '',
                  num_heads: int | None = None, intermediate_size: int | None = None,
                  hidden_size: int | None = None) -> dict[str, Any]:
  """Reads a run, applies `transform`, writes the new run; returns a summary."""
  folder, which = saved_runs.parse_ref(run_ref)
  run = saved_runs.load_run(folder, which)
  encoder = run.model.encoder
  details: Any = None
  if transform == 'low_rank':
    config, params, reports = low_rank.factorize(encoder, run.params, rank=rank,
                                                 energy=energy, sites=sites)
    details = [{'site': r.site, 'rank': r.rank, 'kept_energy': r.kept_energy}
               for r in reports]
  elif transform == 'embeddings':  # ALBERT-style factorised embedding tables
    if not embedding_size:
      raise ValueError('--transform embeddings needs --embedding_size')
    config, params, kept = low_rank.factorize_embeddings(encoder, run.params, embedding_size)
    details = {'embedding_size': embedding_size, 'energy_kept': kept}
  elif transform == 'share':
    config, params = share.share(encoder, run.params, groups=groups, parts=parts)
  elif transform == 'ptq':  # calibrated on the first examples of the run's train split
    tokenizer = saved_runs.run_tokenizer(folder, run.config)
    _, features = load_split(run.config, run.spec, tokenizer, run.config.train_split,
                             calibration_examples)
    batches = BatchIterator(features, run.config.eval_batch_size,
                            max_length=run.config.max_length,
                            pad_multiple=run.config.pad_multiple, num_epochs=1,
                            pad_id=tokenizer.pad_token_id or 0)
    stats = quantize.calibrate(run.model, run.params, batches)
    config, params = quantize.ptq(encoder, run.params, stats, calibration, bits)
    details = {'calibration': calibration, 'examples': len(features), 'sites': len(stats),
               'bits': bits}
  elif transform == 'select_layers':  # a shallower student (DistilBERT: every other layer)
    kept = student_init.parse_layers(layers)
    if not kept:
      raise ValueError('--transform select_layers needs --layers, e.g. 0,2,4')
    config, params = student_init.select_layers(encoder, run.params, kept)
    details = {'layers': kept}
  elif transform == 'truncate_width':  # a narrower student: leading heads/units/coordinates
    if num_heads is None and intermediate_size is None and hidden_size is None:
      raise ValueError('--transform truncate_width needs --num_heads, --intermediate_size '
                       'and/or --hidden_size')
    if hidden_size is not None and run.model.layer_mix.startswith('last:'):
      raise ValueError(f'--hidden_size cannot truncate the head of layer_mix='
                       f'{run.model.layer_mix!r} (it reads concatenated layers)')
    config, params = student_init.truncate_width(
        encoder, run.params, num_heads=num_heads, intermediate_size=intermediate_size,
        hidden_size=hidden_size)
    details = {'num_heads': num_heads, 'intermediate_size': intermediate_size,
               'hidden_size': hidden_size}
  else:
    raise ValueError(f'transform must be one of {TRANSFORMS}, got {transform!r}')
  model = run.model.clone(encoder=config)
  saved_runs.write_run(out, model, params, config=run.config,
                       tokenizer=saved_runs.run_tokenizer(folder, run.config),
                       info={'transform': transform, 'source': f'{folder}:{which}'})
  summary = {'source': f'{folder}:{which}', 'out': os.path.abspath(out),
             'transform': transform, 'params_before': count(run.params),
             'params_after': count(params), 'sites': details}
  return summary


def main(argv):
  del argv
  f = flags.FLAGS
  summary = transform_run(f.run, f.out, f.transform, f.rank, f.energy, f.sites, f.groups,
                          f.parts, f.calibration, f.calibration_examples, int(f.bits),
                          f.embedding_size, f.layers, f.num_heads, f.intermediate_size,
                          f.hidden_size)
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  flags.DEFINE_string('run', None, "The source run, 'folder[:best|:latest]'.")
  flags.DEFINE_string('out', None, 'The new run folder to write.')
  flags.DEFINE_enum('transform', None, list(TRANSFORMS), 'Which transform.')
  flags.DEFINE_integer('rank', None, 'low_rank: singular values kept per kernel.')
  flags.DEFINE_float('energy', None, 'low_rank: or the spectrum energy kept, in (0, 1].')
  flags.DEFINE_string('sites', low_rank.PROJECTIONS, 'low_rank: regex over encoder sites.')
  flags.DEFINE_integer('groups', 1, 'share: groups of contiguous layers sharing one set.')
  flags.DEFINE_enum('parts', 'all', list(share.PARTS), 'share: what is shared.')
  flags.DEFINE_enum('calibration', 'max', list(quantize.CALIBRATIONS),
                    'ptq: activation clip from the max, 99.99th percentile or least MSE.')
  flags.DEFINE_integer('calibration_examples', 512, 'ptq: train examples to calibrate on.')
  flags.DEFINE_integer('embedding_size', None, 'embeddings: width E of the tables (< H).')
  flags.DEFINE_enum('bits', '8', ['4', '8'], 'ptq: kernel bits (4 = packed int4, w4a8).')
  flags.DEFINE_string('layers', '', 'select_layers: source layers kept, e.g. 0,2,4.')
  flags.DEFINE_integer('num_heads', None, 'truncate_width: leading heads kept per layer.')
  flags.DEFINE_integer('intermediate_size', None, 'truncate_width: leading FFN units kept.')
  flags.DEFINE_integer('hidden_size', None, 'truncate_width: leading hidden coordinates kept.')
  flags.mark_flags_as_required(['run', 'out', 'transform'])
  app.run(main)
