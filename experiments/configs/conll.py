r"""Fine-tune a BERT-family encoder for CoNLL-2003 NER (token tagging, entity-level F1).

    python -m experiments.main --config experiments/configs/conll.py \
        --workdir runs/conll --config.data_dir=../shared/data
    python -m experiments.main --config experiments/configs/conll.py:runlocal --workdir /tmp/ner

Labels sit on each word's first sub-token; scores use seqeval semantics (IOB2 chunks).
Expected: not measured yet on the bundled MiniLM (a full run is ~1 h on 2 CPU cores).
"""
from experiments.configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model='minilm-l6', runlocal=False)
  config = common.trainer_defaults()
  config.task = 'conll2003'
  config.model = args.model
  config.data_dir = common.default_data_dir('')
  config.max_length = 128
  config.num_epochs = 3
  config.optimizer.learning_rate = 1e-4
  if args.runlocal:
    config.train_examples, config.eval_examples = 256, 128
    config.batch_size, config.num_epochs, config.log_every = 16, 1, 4
  return config
