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
import ml_collections

from experiments.configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, continued=False, runlocal=False)
  c = ml_collections.ConfigDict()
  c.model = 'minilm-l6'   # tokenizer and architecture family (and weights when continued)
  # From scratch with these EncoderConfig fields ('' = continue from model's weights).
  c.scratch = '' if args.continued else (
      'num_layers=4,hidden_size=256,num_heads=4,intermediate_size=1024')
  c.corpus = 'gutenberg'
  c.max_documents = 0
  c.objectives = 'mlm,mlm+nsp,mlm+sop'
  c.pretrain_steps = 2000
  c.pretrain_batch = 64
  c.pretrain_lr = 1e-4 if args.continued else 5e-4
  c.max_length = 128
  c.dev_sequences = 256
  c.tasks = 'mrpc,stsb,sst2'
  c.seeds = '0,1,2'
  c.data_dir = common.default_data_dir('glue')
  c.finetune_epochs = 3
  c.finetune_examples = 8000   # first N train examples of each task (0 = all)
  c.finetune_lr = 1e-4
  # BERT fine-tunes from the pooler, which only the pair objectives train (MLM alone
  # leaves it random): that is part of what NSP could buy, so it is the default.
  c.pooling = 'pooler'
  c.seed = 0               # of the pre-training runs
  c.keep_workdirs = True   # finished runs are reused when the study is rerun
  if args.runlocal:
    c.scratch = 'num_layers=1,hidden_size=32,num_heads=2,intermediate_size=64'
    c.max_documents, c.pretrain_steps, c.pretrain_batch = 2, 4, 8
    c.max_length, c.dev_sequences = 64, 8
    c.tasks, c.seeds, c.finetune_epochs, c.finetune_examples = 'sst2', '0', 1, 32
  return c
