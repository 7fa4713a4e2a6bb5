"""Structural transforms of a saved run, each written as a new run.

    summary = transform_run('runs/sst2:best', 'runs/sst2_r64', 'low_rank', rank=64)
    summary = transform_run('runs/sst2', 'runs/sst2_int8', 'ptq', calibration='mse')
    summary = transform_run('runs/student', 'runs/narrow', 'truncate_width', num_heads=6)
    summary = transform_run('runs/fq', 'runs/fq_integer', 'integer_only')   # I-BERT

`TRANSFORMS` maps a name to a small function `(run data, **its options) -> (encoder
config, params, details)`; `transform_run` reads the run, applies one, writes the result
with the source's config and tokenizer (so evaluation, export and `init_from` work on it
as on any run) and returns the parameter counts and the details. Each function takes
only its own options: an option another transform reads is an error naming the ones
this transform knows.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable

from research import specs
from research.models.sizes import count_params
from research.runs import run_data
from research.transforms import integer_only, low_rank, narrow, quantize, share, student_init

Result = tuple[Any, Any, Any]  # (encoder config, params, details)


def low_rank_run(data: run_data.RunData, *, rank: int | None = None,
                 energy: float | None = None, sites: str = low_rank.PROJECTIONS) -> Result:
  """Truncated-SVD factorisation of the projections matching `sites` (rank or energy)."""
  config, params, reports = low_rank.factorize(data.run.model.encoder, data.run.params,
                                               rank=rank, energy=energy, sites=sites)
  return config, params, [{'site': r.site, 'rank': r.rank, 'kept_energy': r.kept_energy}
                          for r in reports]


def embeddings_run(data: run_data.RunData, *, embedding_size: int | None = None) -> Result:
  """ALBERT-style factorised embedding tables of width `embedding_size`."""
  if not embedding_size:
    raise ValueError('transform embeddings needs embedding_size')
  config, params, kept = low_rank.factorize_embeddings(data.run.model.encoder,
                                                       data.run.params, embedding_size)
  return config, params, {'embedding_size': embedding_size, 'energy_kept': kept}


def share_run(data: run_data.RunData, *, groups: int = 1, parts: str = 'all') -> Result:
  """Cross-layer sharing (all / attention / FFN) in `groups`, initialised by averaging."""
  config, params = share.share(data.run.model.encoder, data.run.params, groups=groups,
                               parts=parts)
  return config, params, {'groups': groups, 'parts': parts}


def ptq_run(data: run_data.RunData, *, calibration: str = 'max',
            calibration_examples: int = 512, bits: int = 8) -> Result:
  """Post-training int8 (or w4a8) quantization calibrated on the first train examples."""
  _, features = data.split(data.config.train_split, calibration_examples)
  stats = quantize.calibrate(data.run.model, data.run.params, data.batches(features))
  config, params = quantize.ptq(data.run.model.encoder, data.run.params, stats, calibration,
                                int(bits))
  return config, params, {'calibration': calibration, 'examples': len(features),
                          'sites': len(stats), 'bits': int(bits)}


def integer_only_run(data: run_data.RunData) -> Result:
  """The integer-only twin of a fully quantized run: the same parameters, every
  product and softmax / GELU / LayerNorm on integers (I-BERT; `integer_only.py`)."""
  config = integer_only.integer_only(data.run.model.encoder)
  nonlinear = sorted({spec for _, spec in config.nonlinear})
  return config, data.run.params, {'products': [s for _, s in config.products],
                                   'nonlinear': nonlinear}


def select_layers_run(data: run_data.RunData, *, layers: str = '') -> Result:
  """A shallower student of the listed layers (DistilBERT: every other layer)."""
  kept = specs.items(layers, int, what='layers')
  if not kept:
    raise ValueError('transform select_layers needs layers, e.g. 0,2,4')
  config, params = student_init.select_layers(data.run.model.encoder, data.run.params, kept)
  return config, params, {'layers': kept}


def truncate_width_run(data: run_data.RunData, *, num_heads: int | None = None,
                       intermediate_size: int | None = None,
                       hidden_size: int | None = None, order: str = 'importance',
                       importance_examples: int = 512) -> Result:
  """A narrower student: each layer's most important heads and FFN units and the most
  important hidden coordinates, scored with the task loss on the first
  `importance_examples` train examples (`narrow.ranked_width`); `order='leading'`
  keeps the leading ones instead (`student_init.truncate_width`, no data read)."""
  if num_heads is None and intermediate_size is None and hidden_size is None:
    raise ValueError('transform truncate_width needs num_heads, intermediate_size and/or '
                     'hidden_size')
  if order not in narrow.ORDERS:
    raise ValueError(f'transform truncate_width: order must be one of {list(narrow.ORDERS)}, '
                     f'got {order!r}')
  if hidden_size is not None and data.run.model.layer_mix.startswith('last:'):
    raise ValueError(f'hidden_size cannot truncate the head of layer_mix='
                     f'{data.run.model.layer_mix!r} (it reads concatenated layers)')
  sizes = {'num_heads': num_heads, 'intermediate_size': intermediate_size,
           'hidden_size': hidden_size}
  details = {**sizes, 'order': order}
  if order == 'leading':
    config, params = student_init.truncate_width(data.run.model.encoder, data.run.params,
                                                 **sizes)
    return config, params, details
  if importance_examples < 1:
    raise ValueError(f'importance_examples must be >= 1, got {importance_examples}')
  _, sample = data.split(data.config.train_split, importance_examples, training=True)
  config, params = narrow.ranked_width(data.run.model, data.run.params,
                                       data.batches(sample), **sizes)
  return config, params, {**details, 'importance_examples': len(sample)}


TRANSFORMS: dict[str, Callable[..., Result]] = {
    'low_rank': low_rank_run,
    'embeddings': embeddings_run,
    'share': share_run,
    'ptq': ptq_run,
    'integer_only': integer_only_run,
    'select_layers': select_layers_run,
    'truncate_width': truncate_width_run,
}


def options(transform: str) -> tuple[str, ...]:
  """The option names `transform` takes."""
  if transform not in TRANSFORMS:
    raise ValueError(f'transform must be one of {sorted(TRANSFORMS)}, got {transform!r}')
  return tuple(p.name for p in inspect.signature(TRANSFORMS[transform]).parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY)


def transform_run(run_ref: str, out: str, transform: str, **kwargs) -> dict[str, Any]:
  """Reads a run, applies `transform` with its options, writes the new run; returns a
  summary (source, out, parameter counts before and after, the transform's details)."""
  known = options(transform)
  unknown = sorted(set(kwargs) - set(known))
  if unknown:
    raise ValueError(f'transform {transform} takes {list(known)}, not {unknown}')
  data = run_data.load(run_ref)
  config, params, details = TRANSFORMS[transform](data, **kwargs)
  model = data.run.model.clone(encoder=config)
  data.write(out, model, params, {'transform': transform})
  return {'source': data.ref, 'out': os.path.abspath(out), 'transform': transform,
          'params_before': count_params(data.run.params), 'params_after': count_params(params),
          'sites': details}
