r"""General (task-agnostic) distillation: a student learns a teacher's hidden states and
self-attention relations on unlabelled text, before any task.

    # 3-layer student (layers 1,3,5 of the bundled MiniLM-L6) on the Gutenberg books:
    python -m experiments.main --workdir runs/gd_minilm_l3 \
        --config experiments/configs/general_distill.py:corpus=gutenberg,layers=1+3+5
    # then any task starts from it, e.g. task distillation on SST-2 from a fine-tuned run:
    python -m experiments.main --config experiments/configs/glue.py:task=sst2 \
        --workdir runs/sst2_from_gd --config.init_from=runs/gd_minilm_l3 \
        --config.distill.teachers=runs/sst2_main --config.distill.mode=in_step \
        --config.distill.hidden_weight=1.0
    # a narrower student (leading 6 heads, 768 FFN units, 256 wide) on a .txt folder:
    python -m experiments.main --workdir runs/gd_narrow --config \
        experiments/configs/general_distill.py:corpus=/data/text,layers=0+2+4,heads=6,ffn=768,hidden=256
    # a random 4-layer student of the teacher's architecture (and tokenizer):
    python -m experiments.main --workdir runs/gd_random \
        --config experiments/configs/general_distill.py:layers=0+1+2+3,random
    # the CPU-sized run (300 steps of 16 x 64 tokens; the measurement below used
    # --config.max_length=128: ~18 min on 2 shared cores) and a tiny smoke run:
    python -m experiments.main --workdir /tmp/gd_cpu \
        --config experiments/configs/general_distill.py:layers=1+3+5,cpu_budget
    python -m experiments.main --workdir /tmp/gd_local \
        --config experiments/configs/general_distill.py:layers=1,runlocal

Arguments: corpus=gutenberg | tinyshakespeare | <a .txt file or folder> | task:<name>;
teacher=<pre-trained checkpoint: alias, folder or Hub id> or <run folder[:best|latest]>
(default minilm-l6); the student: layers=<teacher layers joined by '+'> (',' separates
arguments), heads=, ffn=, hidden= (kept per layer; the leading ones, order=leading),
random (a randomly initialised student of that shape instead of teacher weights);
runlocal, cpu_budget. Everything else: --config.<field> (e.g. --config.student='layers=1,3,5
hidden=192 order=leading', --config.distill.attention_weight=1.0 for TinyBERT's attention
KL when the head counts agree, --config.distill.alpha=0.5 to keep half of the masked-LM
loss).

The loss is TinyBERT's hidden-state MSE (uniform layer map, learned projections when the
widths differ) plus MiniLM v2's q/k/v relation KL on the last layer; the corpus text is
masked as for MLM (teacher and student see the same input), the MLM loss is off
(distill.alpha = 1), and the one evaluation at the end (its MLM accuracy reads an
untrained head) makes best/ the final student. The tokenized corpus is cached
(corpus.cache_dir), so reruns skip tokenization. Expected numbers: /tmp notes of issue 29
(not yet in docs/results.md): SST-2 task distillation from the general-distilled student
against the same student without it.
"""
from experiments.configs import common
from research.train import defaults


def get_config(arg=None):
  args = common.parse_arg(arg, corpus='gutenberg', teacher='minilm-l6', layers='', heads=0,
                          ffn=0, hidden=0, random=False, runlocal=False, cpu_budget=False)
  widths = {'heads': args.heads, 'ffn': args.ffn, 'hidden': args.hidden}
  spec = ' '.join([f'layers={args.layers.replace("+", ",")}'] if args.layers else [])
  if args.random:  # the same shape, random params (config.scratch)
    scratch = {'num_layers': len(args.layers.split('+')) if args.layers else 0,
               'num_heads': args.heads, 'intermediate_size': args.ffn,
               'hidden_size': args.hidden}
    config = defaults.general_distillation_defaults(args.teacher, args.corpus)
    config.scratch = ','.join(f'{k}={v}' for k, v in scratch.items() if v)
    if not config.scratch:
      raise ValueError('random needs the student shape: layers=, heads=, ffn= or hidden=')
  else:
    spec = ' '.join([spec] + [f'{k}={v}' for k, v in widths.items() if v])
    if any(widths.values()):
      spec += ' order=leading'
    config = defaults.general_distillation_defaults(args.teacher, args.corpus, spec.strip())
  if args.corpus.startswith('task:'):
    config.task = args.corpus[len('task:'):]
    config.data_dir = common.default_data_dir('glue')
  if args.cpu_budget:  # a few minutes on 2 CPU cores (64-token sequences, as SST-2's)
    config.corpus.max_documents = 4
    config.corpus.dev_sequences = 64
    config.max_length = 64
    config.batch_size = 16
    config.eval_batch_size = 32
    config.total_steps = 300
    config.eval_every = 100  # best/ = the lowest dev distillation loss of three
    config.log_every = 25
  if args.runlocal:
    common.corpus_smoke_run(config)
  return config
