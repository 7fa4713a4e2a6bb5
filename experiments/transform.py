r"""Applies a structural transform to a saved run and writes the result as a new run.

    python -m experiments.transform --run runs/sst2:best --out runs/sst2_r64 \
        --transform low_rank --rank 64                    # or --energy 0.9
    python -m experiments.transform --run runs/sst2:best --out runs/sst2_e128 \
        --transform embeddings --embedding_size 128     # factorised embedding tables
    python -m experiments.transform --run runs/sst2:best --out runs/sst2_shared \
        --transform share --parts attention --groups 1
    python -m experiments.transform --run runs/sst2:best --out runs/sst2_int8 \
        --transform ptq --calibration mse --calibration_examples 512    # int8 (--bits 4)
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
from research.transforms import low_rank, quantize, share

TRANSFORMS = ('low_rank', 'embeddings', 'share', 'ptq')


def count(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def transform_run(run_ref: str, out: str, transform: str, rank: int | None = None,
                  energy: float | None = None, sites: str = low_rank.PROJECTIONS,
                  groups: int = 1, parts: str = 'all', calibration: str = 'max',
                  calibration_examples: int = 512, bits: int = 8,
                  embedding_size: int | None = None) -> dict[str, Any]:
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
                          f.embedding_size)
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
  flags.mark_flags_as_required(['run', 'out', 'transform'])
  app.run(main)
