r"""(Continued) pre-training on unlabelled text: masked LM, optionally with NSP or SOP.

    # masked LM on the 16 Gutenberg books, from the bundled MiniLM
    python -m experiments.main --config experiments/configs/pretrain.py:corpus=gutenberg \
        --workdir runs/mlm_gutenberg
    # masked LM + sentence order on tinyshakespeare, whole-word masking
    python -m experiments.main --workdir runs/sop_shakespeare --config \
        experiments/configs/pretrain.py:corpus=tinyshakespeare,objective=mlm+sop,whole_word
    # task-adaptive pre-training (TAPT) on SST-2's train sentences, then fine-tune from it
    python -m experiments.main --config experiments/configs/pretrain.py:task=sst2 \
        --workdir runs/tapt_sst2
    python -m experiments.main --config experiments/configs/glue.py:task=sst2 \
        --workdir runs/sst2_from_tapt --config.init_from=runs/tapt_sst2
    # tiny CPU smoke run
    python -m experiments.main --workdir /tmp/mlm_local \
        --config experiments/configs/pretrain.py:corpus=gutenberg,objective=mlm,runlocal

Arguments: corpus=gutenberg | tinyshakespeare | <a .txt file or folder>,
task=<registered task> (its train split's text instead of a corpus), objective=mlm |
mlm+nsp | mlm+sop | clm (clm needs a causal checkpoint, e.g. GPT-2), model=<name>,
whole_word, runlocal.

The run folder holds the encoder and the pre-training head ('head', 'pair_head');
`--config.init_from=<run>` starts a fine-tune from its encoder (the head does not fit a
task and is initialised fresh, see `saved_runs.init_params`). The best checkpoint is the
highest MLM accuracy on a fixed-mask dev sample of `corpus.dev_sequences` held-out
sequences. Expected numbers: not measured yet (no full run on this machine so far).
"""
from experiments.configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, corpus='gutenberg', task='', objective='mlm',
                          model='minilm-l6', whole_word=False, runlocal=False)
  config = common.pretraining_defaults(args.corpus, args.objective)
  config.model = args.model
  config.corpus.whole_word = args.whole_word
  if args.task:
    # TAPT: the task's own train text; config.task names it (and its data folder).
    config.task = args.task
    config.corpus.source = f'task:{args.task}'
    config.data_dir = common.default_data_dir('glue')
  if args.runlocal:
    # Gutenberg documents are whole books: one is plenty for a smoke run.
    common.corpus_smoke_run(
        config, 1 if args.corpus == 'gutenberg' and not args.task else 200)
    config.eval_every = 3
  return config
