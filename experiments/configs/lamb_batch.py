r"""LAMB against AdamW as the batch grows: small BERTs pre-trained from scratch with MLM.

    # CPU-sized (2 layers x 128, length 32, 65,536 sequences per run, batch 64 ... 4096):
    python -m experiments.lamb_batch --config experiments/configs/lamb_batch.py \
        --out runs/lamb_batch
    # the issue's model (4 layers x 256, length 128) with MLM + SOP on 8 accelerators:
    python -m experiments.lamb_batch --out runs/lamb_batch_full \
        --config experiments/configs/lamb_batch.py:size=full
    # tiny smoke run:
    python -m experiments.lamb_batch --config experiments/configs/lamb_batch.py:runlocal \
        --out /tmp/lamb_batch

Arguments: size=cpu | full, runlocal. Every field can be overridden with
--config.<field>=<value>.

Every run sees the same number of sequences (`examples`), so a batch 64x larger takes
64x fewer updates. Learning rates follow You et al. 2020 (*Large batch optimization for
deep learning: training BERT in 76 minutes*): the square-root rule lr(B) = lr(base) *
sqrt(B / base_batch), linear warmup over the same share of the run for every batch
(`warmup_ratio`), then linear decay. A batch above `micro_batch` is accumulated in
micro-batches; with several devices the micro-batch is also split over them (data
parallel, `mesh.data=-1`), so the same config runs unchanged on 8 accelerators.
"""
from experiments.configs import common
from research.runs import lamb_batch


def get_config(arg=None):
  args = common.parse_arg(arg, size='cpu', runlocal=False)
  c = lamb_batch.defaults(args.size)
  if args.runlocal:
    c.scratch = 'num_layers=1,hidden_size=32,num_heads=2,intermediate_size=64'
    c.max_length, c.examples, c.batch_sizes = 32, 64, '8,32'
    c.micro_batch, c.base_batch, c.dev_sequences, c.eval_batch_size = 16, 8, 8, 8
    c.max_documents, c.log_every = 1, 1
  return c
