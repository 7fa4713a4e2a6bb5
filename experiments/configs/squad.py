r"""Fine-tune a BERT-family encoder for SQuAD v1.1 span extraction (EM / F1).

    python -m experiments.main --config experiments/configs/squad.py --workdir runs/squad
    # offline smoke run: only the dev file is on disk, so it trains on a dev slice
    python -m experiments.main --config experiments/configs/squad.py:runlocal \
        --workdir /tmp/squad --config.data_dir=../shared/data

Windows of max_length 384 with doc_stride 128; answers are mapped back to context text.
Expected: not measured here (needs the SQuAD train set: TFDS 'squad/v1.1' or a
train-v1.1.json beside dev-v1.1.json).
"""
from experiments.configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model='minilm-l6', runlocal=False)
  config = common.trainer_defaults()
  config.task = 'squad'
  config.model = args.model
  config.data_dir = common.default_data_dir('')
  config.max_length, config.doc_stride = 384, 128
  config.num_epochs = 2
  config.optimizer.learning_rate = 1e-4
  if args.runlocal:
    config.train_split = 'validation'
    config.train_examples, config.eval_examples = 64, 32
    config.max_length, config.doc_stride, config.pad_multiple = 256, 64, 64
    config.batch_size, config.num_epochs, config.log_every = 8, 1, 2
  return config
