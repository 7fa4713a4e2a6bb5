r"""Fine-tune a BERT-family encoder on a GLUE task (one config for the whole family).

    python -m experiments.main --config experiments/configs/glue.py:task=sst2 \
        --workdir runs/sst2 --config.data_dir=../shared/data/glue
    # tiny CPU smoke run (a few hundred examples, one short epoch):
    python -m experiments.main --config experiments/configs/glue.py:task=sst2,runlocal \
        --workdir /tmp/sst2_local

    # the main job (README's first command): SST-2 within ~15 minutes on 2 CPU cores
    python -m experiments.main --config experiments/configs/glue.py:task=sst2,cpu_budget \
        --workdir runs/sst2_main

    # the recipe tuned on SST-2 dev (LLRD 0.9, lr 1.5e-4, parameter EMA 0.999):
    python -m experiments.main --config experiments/configs/glue.py:task=sst2,tuned \
        --workdir runs/sst2_tuned --config.max_length=64 --config.dtype=bfloat16

Arguments: task=<glue task>, model=<name>, runlocal, cpu_budget, tuned.
Expected SST-2 dev accuracy (bundled MiniLM-L6, 3 epochs, max length 64, bf16 on a
2-core AMX CPU, ~30-36 min): default recipe 89.91 / 89.22 (seeds 0 / 1; transformers +
PyTorch with the same recipe: 89.9), `tuned` 90.48 / 89.45 / 89.11 / 90.02 (seeds 0-3);
`tuned` distilled from those seven runs (`--config.distill.teachers=runs/a,...`,
alpha 0.5, T 2) 90.48 / 89.91 / 89.68 (seeds 0-2). See README.md "Results".
"""
from experiments.configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, task='sst2', model='minilm-l6', runlocal=False,
                          cpu_budget=False, tuned=False)
  config = common.trainer_defaults()
  config.task = args.task
  config.model = args.model
  config.data_dir = common.default_data_dir('glue')
  config.max_length = 128
  config.batch_size = 32
  config.num_epochs = 3
  config.optimizer.learning_rate = 1e-4
  # all-MiniLM-L6-v2 was trained for mean-pooled sentence embeddings: pool the same way.
  config.pooling = 'mean'
  if args.tuned:
    # Lower layers move less (LLRD), a higher peak rate for the top, and evaluation on
    # an average of recent params. On SST-2 dev: 90.48 / 89.45 / 89.11 / 90.02 (seeds 0-3)
    # against the default's 89.91 / 89.22 (seeds 0 / 1), i.e. within seed noise.
    config.optimizer.learning_rate = 1.5e-4
    config.optimizer.llrd = 0.9
    config.ema_decay = 0.999
  if args.cpu_budget:
    # A fixed step budget (not a timer, so runs are reproducible) sized for ~15 minutes
    # on 2 CPU cores; SST-2 sentences fit in 64 tokens (the longest dev one has 66).
    config.max_length = 64
    config.total_steps = 1200
    config.eval_every = 400
    config.log_every = 20
  if args.runlocal:
    config.train_examples = 256
    config.eval_examples = 128
    config.batch_size = 16
    config.num_epochs = 1
    config.log_every = 4
  return config
