r"""Does next-sentence (or sentence-order) prediction help? MLM vs MLM+NSP vs MLM+SOP.

    # small BERTs from scratch on the Gutenberg books, then MRPC, STS-B, SST-2, 3 seeds:
    python -m experiments.pretrain_ablation --out runs/pretrain_ablation \
        --config experiments/configs/pretrain_ablation.py
    # the bundled MiniLM pre-trained further with each objective instead of from scratch:
    python -m experiments.pretrain_ablation --out runs/pretrain_ablation_minilm \
        --config experiments/configs/pretrain_ablation.py:continued
    # tiny smoke run:
    python -m experiments.pretrain_ablation --out /tmp/ablation \
        --config experiments/configs/pretrain_ablation.py:runlocal

Arguments: continued, runlocal. Every field can be overridden with --config.<field>=<value>.

Every objective gets the same corpus, architecture, steps, batch, rate and seed; only
the pre-training objective differs. Each pre-trained run is then fine-tuned on every
task with every seed by the same recipe (the family GLUE config with `pooling`,
`finetune_epochs`, `finetune_examples`). The table reports each task's mean and seed
spread per objective and the difference to MLM alone, with whether it exceeds the seed
noise. Cost: a pre-training run of the default size takes ~1 h on 2 CPU cores; the
fine-tunes ~2 h per objective for the three tasks and seeds.
"""
from experiments.configs import common
from research.runs import pretrain_ablation


def get_config(arg=None):
  args = common.parse_arg(arg, continued=False, runlocal=False)
  c = pretrain_ablation.defaults(args.continued)
  if args.runlocal:
    c.scratch = 'num_layers=1,hidden_size=32,num_heads=2,intermediate_size=64'
    c.max_documents, c.pretrain_steps, c.pretrain_batch = 2, 4, 8
    c.max_length, c.dev_sequences = 64, 8
    c.tasks, c.seeds, c.finetune_epochs, c.finetune_examples = 'sst2', '0', 1, 32
  return c
