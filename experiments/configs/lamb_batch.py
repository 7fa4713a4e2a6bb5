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
import ml_collections

from experiments.configs import common

SIZES = {
    # (scratch architecture, max_length, sequences per run, objective)
    # ~2.5 min per run on 2 CPU cores: the tied 30522-word table dominates a model this
    # small (its logits at the predicted tokens, its gradient and Adam moments).
    'cpu': ('num_layers=2,hidden_size=128,num_heads=2,intermediate_size=512', 32, 65536,
            'mlm'),
    'full': ('num_layers=4,hidden_size=256,num_heads=4,intermediate_size=1024', 128, 1048576,
             'mlm+sop'),
}


def get_config(arg=None):
  args = common.parse_arg(arg, size='cpu', runlocal=False)
  if args.size not in SIZES:
    raise ValueError(f'size={args.size!r}; expected one of {sorted(SIZES)}')
  scratch, max_length, examples, objective = SIZES[args.size]
  c = ml_collections.ConfigDict()
  c.model = 'minilm-l6'        # the tokenizer and architecture family (weights unused)
  c.scratch = scratch          # EncoderConfig fields of the model trained from scratch
  c.corpus = 'gutenberg'       # a staged corpus, a .txt file or folder
  c.max_documents = 0          # 0 = all
  c.objective = objective      # 'mlm' | 'mlm+nsp' | 'mlm+sop'
  c.max_length = max_length
  c.examples = examples        # sequences seen by every run
  c.batch_sizes = '64,256,1024,4096'
  c.micro_batch = 256          # rows per forward pass; larger batches accumulate
  c.optimizers = 'adamw,lamb'
  c.base_batch = 64            # the batch at which lr = the base rate below
  # Base rates at base_batch, each the best of a short sweep there (16,384 sequences,
  # CPU size; dev MLM loss): AdamW 1e-3 6.68, 3e-3 6.73; LAMB 2e-3 9.26, 1e-2 6.70,
  # 3e-2 6.75, 1e-1 6.97. LAMB scales each layer's step to its weights' norm, which is
  # small at init (std 0.02), hence its ~10x rate. Larger batches use the sqrt rule.
  c.lr = ml_collections.ConfigDict({'adamw': 1e-3, 'lamb': 1e-2})
  c.warmup_ratio = 0.1
  c.weight_decay = 0.01
  c.clip_norm = 1.0
  c.dev_sequences = 512        # held-out sequences with fixed masks: the final MLM loss
  c.eval_batch_size = 256
  c.seed = 0
  c.log_every = 50
  c.keep_workdirs = True       # finished runs are skipped when the study is rerun
  if args.runlocal:
    c.scratch = 'num_layers=1,hidden_size=32,num_heads=2,intermediate_size=64'
    c.max_length, c.examples, c.batch_sizes = 32, 64, '8,32'
    c.micro_batch, c.base_batch, c.dev_sequences, c.eval_batch_size = 16, 8, 8, 8
    c.max_documents, c.log_every = 1, 1
  return c
