r"""FastFormers-style compression of a fine-tuned run (Kim & Awadalla 2020), as a chain of runs.

    # the full pipeline on the main job's SST-2 run (one student; ~30 min on 2 CPU cores):
    python -m experiments.compress --config experiments/configs/fastformers.py \
        --teacher runs/sst2_main:best --workdir runs/fastformers
    # the CPU-sized version the main job (`make run`) ends with (~7 minutes; distil, int8):
    python -m experiments.compress --config experiments/configs/fastformers.py:cpu_budget \
        --teacher runs/sst2_main:best --workdir runs/sst2_main/compressed
    # distil and recover on TinyBERT-augmented train data (experiments/augment.py):
    python -m experiments.compress --config experiments/configs/fastformers.py \
        --config.data_dir=data/mrpc_aug --teacher runs/mrpc_main:best --workdir runs/ff_aug
    # tiny smoke run (tests, notebooks):
    python -m experiments.compress --config experiments/configs/fastformers.py:runlocal ...

The stages (dynamic length, distillation into each student, importance pruning with a
distillation recovery, int8) and the report are described in `research/runs/fastformers.py`,
whose `defaults()` this config starts from. Expected numbers: docs/results.md,
"FastFormers pipeline".

Arguments: cpu_budget, runlocal.
"""
from research import specs
from research.runs import fastformers


def get_config(arg=None):
  args = set(specs.items(arg or '', what='fastformers arguments'))
  unknown = args - {'cpu_budget', 'runlocal'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; known: cpu_budget, runlocal')
  c = fastformers.defaults()
  if 'cpu_budget' in args:  # the main job's tail: one student, short stages
    c.students = 'layers=1,3,5'
    # No pruning: at this budget 100 recovery steps did not bring a 30 % cut back (int8
    # 85.44 %, 96.0 % of the teacher); the same minutes as 100 more distillation steps
    # give 87.27 % (98.1 %) at 6.2x the teacher at b32 (docs/results.md, issue 29).
    c.distill.steps = 400
    c.prune.heads_fraction = c.prune.ffn_fraction = 0.0
    c.prune.recovery_steps = 0
    c.quantize.examples = 256
    c.speed.sentences = 256
    c.speed.rounds = 2
  if 'runlocal' in args:
    c.students = 'layers=1'
    c.distill.steps = 4
    c.prune.recovery_steps = 2
    c.prune.heads_fraction = c.prune.ffn_fraction = 0.3
    c.prune.importance_examples = 16
    c.quantize.examples = 16
    c.speed.sentences = 16
    c.speed.rounds = 1
    c.speed.torch = False
    c.eval_examples = 32
  return c
