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
        # the most important heads / FFN units / coordinates on 512 train examples
        # (--importance_examples); --order leading keeps the leading ones, reading no data
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
counts before and after (and, for low rank, each site's rank and kept energy). The
transforms are `research/runs/transform.py` (`TRANSFORMS`); each reads only its own flags
(`integer_only` reads none: the I-BERT integer twin of a fully quantized run).
"""
from __future__ import annotations

import json

from absl import app, flags

from research import logs
from research.runs import transform
from research.transforms import low_rank, narrow, quantize, share

flags.DEFINE_string('run', None, "The source run, 'folder[:best|:latest]'.")
flags.DEFINE_string('out', None, 'The new run folder to write.')
flags.DEFINE_enum('transform', None, list(transform.TRANSFORMS), 'Which transform.')
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
flags.DEFINE_integer('num_heads', None, 'truncate_width: heads kept per layer.')
flags.DEFINE_integer('intermediate_size', None, 'truncate_width: FFN units kept per layer.')
flags.DEFINE_integer('hidden_size', None, 'truncate_width: hidden coordinates kept.')
flags.DEFINE_enum('order', 'importance', list(narrow.ORDERS),
                  'truncate_width: keep the most important heads / units / coordinates '
                  '(gate gradients of the task loss on train examples) or the leading ones.')
flags.DEFINE_integer('importance_examples', 512,
                     'truncate_width --order importance: train examples scored.')
flags.mark_flags_as_required(['run', 'out', 'transform'])


def main(argv):
  del argv
  logs.setup()
  f = flags.FLAGS
  options = {name: f[name].value for name in transform.options(f.transform)}
  if 'bits' in options:
    options['bits'] = int(options['bits'])
  summary = transform.transform_run(f.run, f.out, f.transform, **options)
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  app.run(main)
