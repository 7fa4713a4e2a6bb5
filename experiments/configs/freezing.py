r"""What to freeze? Full fine-tuning vs feature extractor vs BitFit vs bottom-k, same budget.

    # SST-2, first 4,000 train sentences, 1 epoch (125 steps of 32), full dev set:
    python -m experiments.freezing --config experiments/configs/freezing.py \
        --out runs/freezing
    # tiny CPU smoke run (64 train / 64 dev sentences, 4 steps per preset):
    python -m experiments.freezing --config experiments/configs/freezing.py:runlocal \
        --out /tmp/freezing
    # other presets or rates (a rate is per preset kind; 'bottom' covers every bottom:K):
    python -m experiments.freezing --config experiments/configs/freezing.py \
        --out runs/freezing_bottom --config.presets=full,bottom:2,bottom:4 \
        --config.lr.bitfit=3e-3

Arguments: model=<name>, runlocal. Every field below can be overridden with
--config.<field>=<value>.

Measured with the defaults (4,000 train sentences, 125 steps, 872 dev; 2 shared CPU
cores): dev accuracy full 82.6, bottom:3 82.3, BitFit 78.4, feature extractor 72.4;
trainable 22.7M / 5.47M / 26,882 / 770; Adam state 173 MiB / 42 MiB / 210 KiB / 6 KiB;
wall 161 / 134 / 131 / 68 s (the trainer stops gradients at a wholly frozen encoder,
so the feature extractor skips the encoder's backward pass; BitFit and bottom-k still
compute it). The frozen-encoder head is under-trained at this budget: a linear probe
on all 67k sentences reaches ~80.7 (experiments/configs/layer_probe.py).
"""
from experiments.configs import common
from research.runs import freezing


def get_config(arg=None):
  args = common.parse_arg(arg, model='minilm-l6', runlocal=False)
  c = freezing.defaults(args.model)
  if args.runlocal:
    c.train_examples, c.eval_examples = 64, 64
    c.batch_size, c.eval_batch_size = 16, 64
    c.max_length = c.pad_multiple = 32  # one compiled shape per step function
    c.epochs, c.log_every = 1, 2
  return c
