r"""Fine-tune a BERT-family encoder on a GLUE task (one config for the whole family).

    python -m experiments.main --config experiments/configs/glue.py:task=sst2 \
        --workdir runs/sst2 --config.data_dir=../shared/data/glue
    # tiny CPU smoke run (a few hundred examples, one short epoch):
    python -m experiments.main --config experiments/configs/glue.py:task=sst2,runlocal \
        --workdir /tmp/sst2_local

Arguments: task=<glue task>, model=<name>, runlocal.
Expected (bundled MiniLM-L6, 2 CPU cores): see README.md "Fine-tuning results";
the transformers + PyTorch baseline recipe reaches 89.9 % SST-2 dev accuracy.
"""
from experiments.configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, task='sst2', model='minilm-l6', runlocal=False)
  config = common.trainer_defaults()
  config.task = args.task
  config.model = args.model
  config.data_dir = common.default_data_dir('glue')
  config.max_length = 128
  config.batch_size = 32
  config.num_epochs = 3
  config.optimizer.learning_rate = 1e-4
  if args.task == 'stsb':
    config.pooling = 'mean'
  if args.runlocal:
    config.train_examples = 256
    config.eval_examples = 128
    config.batch_size = 16
    config.num_epochs = 1
    config.log_every = 4
  return config
