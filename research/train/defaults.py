"""The trainer's config schema: every field any trainer path reads, with its default.

    config = trainer_defaults()          # experiment configs start here
    config = complete(config)            # what the trainer runs: missing fields filled,
                                         # unknown ones refused (a typo fails loudly)
    config = complete(saved, strict=False)   # a run's config.json from an older version

Code reads `config.x`, never `config.get('x', default)`: a default lives here only.
Techniques (`research/train/techniques.py`) read their own fields (`quant*`, `lora`,
`sparsity`, `distill`, `ema_decay`); `reset_techniques` turns them all off, for a run
derived from another one (a distilled student must not inherit its teacher's QAT).
"""
from __future__ import annotations

import difflib
import logging
import os

import ml_collections

from research.transforms import lora, sparsity


def trainer_defaults() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with safe defaults."""
  c = ml_collections.ConfigDict()
  c.model = 'minilm-l6'       # pre-trained checkpoint: alias, folder or Hub id
  # Start from a saved run instead ('runs/x:best' or 'runs/x:latest'): its own
  # architecture, encoder params, tokenizer, and its head when the task matches.
  c.init_from = ''
  # Pre-train from scratch: config.model's tokenizer and architecture family with these
  # EncoderConfig fields changed ('num_layers=4,hidden_size=256,num_heads=4,
  # intermediate_size=1024'), all params randomly initialised. '' = load the weights.
  c.scratch = ''
  # A student cut from config.model (or init_from) before training: FastFormers' spec,
  # 'layers=1,3,5 hidden=256 heads=6 ffn=768 order=leading' (research/train/student.py).
  c.student = ''
  c.task = 'sst2'
  c.data_dir = ''            # local folder in original formats; '' = TFDS
  c.data_source = 'auto'     # 'auto' | 'local' | 'tfds'
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.train_examples = 0       # 0 = all; >0 takes the first N (smoke runs)
  c.eval_examples = 0
  c.max_length = 128
  c.doc_stride = 128         # SQuAD: context tokens shared by consecutive windows
  c.pad_multiple = 16
  c.bucket_batches = 100     # sort by length within chunks of this many batches
  c.batch_size = 32
  c.eval_batch_size = 128
  c.num_epochs = 3
  c.total_steps = 0          # 0 = num_epochs * steps per epoch
  c.layer_mix = 'top'
  c.pooling = 'cls'
  c.head_hidden = 0
  c.head_activation = 'tanh'  # of the head's hidden dense: 'tanh' | 'relu' | 'gelu'
  # Tagging: normalise the token loss by a constant from the train set ('fixed': every
  # token weighs the same in every batch) or by the batch's labelled tokens ('batch', as
  # transformers). With length bucketing 'batch' cost ~0.9 entity F1 on CoNLL-2003
  # (docs/results.md, accuracy parity); see research/objectives/tagging.py.
  c.token_loss = 'fixed'
  c.dropout = 0.1
  c.freeze = 'full'          # research/transforms/freeze.py presets ('bottom:3', 'bitfit', ...)
  c.dtype = 'float32'
  c.seed = 0
  c.log_every = 50
  c.eval_every = 0           # 0 = once per epoch
  c.checkpoint_every = 0     # 0 = at every evaluation
  c.keep_checkpoints = 2
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1})
  c.optimizer = ml_collections.ConfigDict({
      'name': 'adamw', 'learning_rate': 1e-4, 'warmup_ratio': 0.06, 'schedule': 'linear',
      'weight_decay': 0.01, 'clip_norm': 1.0,
      # micro-batches of batch_size per update: an update sees batch_size * this rows
      'accumulate_steps': 1,
      # layer-wise lr decay; 1.0 = off (a float so --config.optimizer.llrd=0.9 works)
      'llrd': 1.0})
  # Pre-training on a text corpus instead of a task (research/train/build.py);
  # source '' = off.
  c.corpus = ml_collections.ConfigDict({
      # A staged corpus name ('gutenberg', 'tinyshakespeare'), a .txt file or folder,
      # 'task:<name>' (that task's train text: TAPT) or 'tfds:<name>[:<split>]'.
      'source': '',
      'documents': '',      # 'blank_lines' | 'file' | '' = the staged corpus's own
      'data_dir': '',       # folder of the staged corpora; '' = the data root's corpus/
      'tfds_field': 'text',  # the text feature of a 'tfds:' source
      'objective': 'mlm',   # 'mlm' | 'mlm+nsp' | 'mlm+sop' | 'clm'
      'mask_rate': 0.15,    # BERT: 15 % of tokens, 80 % [MASK] / 10 % random / 10 % kept
      'whole_word': False,
      # Training logits only at the predicted tokens (at most ceil(share * T) + 4 per
      # row; >= mask_rate; 0 = every token): skips the vocabulary product elsewhere.
      'predict_share': 0.15,
      'dev_sequences': 256,  # held-out sequences (fixed masks) for evaluation
      'max_documents': 0,   # 0 = all
      # Tokenized features of a text-file corpus are cached here, keyed by the files'
      # size and mtime, the tokenizer and the packing arguments ('' = $RESEARCH_CACHE_DIR/
      # corpus or ~/.cache/research/corpus; 'off' = tokenize every run).
      'cache_dir': '',
      'pair_pooling': 'pooler',  # what the NSP / SOP head reads ('cls' without a pooler)
  })

  # -- Techniques (research/train/techniques.py), all off by default ------------------
  # Quantization-aware training (research/transforms/qat.py): '' = off, else a spec such
  # as 'w8,a8' or 'w4,a8,token'; quant_attention also fake-quantizes the attention score
  # and context products; quant_full fake-quantizes what fully quantized BERT does
  # (attention products, embedding tables and output, softmax, GELU, LayerNorms).
  c.quant = ''
  c.quant_attention = False
  c.quant_full = False
  # With quant_full: which groups are fake-quantized ('' = all: attention, embeddings,
  # softmax, gelu, layernorm per token: qat.DEFAULT_FULL_SITES), each optionally at other
  # bits or per token ('layernorm:16', 'embeddings:8:token'); for ablations and remedies.
  c.quant_full_sites = ''
  # LoRA adapters (research/transforms/lora.py): rank 0 = off; the update is scaled by
  # alpha / rank; targets: a regex over projection sites ('encoder/layer_3/attention/query').
  c.lora = ml_collections.ConfigDict({'rank': 0, 'alpha': 16.0,
                                      'targets': lora.DEFAULT_TARGETS})
  # Gradual unstructured pruning (research/transforms/sparsity.py, SPARSITY_DEFAULTS says
  # what each field does): target = final sparsity of each site (0.0 = off).
  c.sparsity = ml_collections.ConfigDict(dict(sparsity.SPARSITY_DEFAULTS))
  # Distillation from saved runs (research/train/distillation.py): comma-separated
  # workdirs (or 'hf:<folder or Hub id>', a fine-tuned Hugging Face classifier) whose
  # outputs become soft targets, weighted alpha against the labels at temperature T;
  # '' = off. mode 'cached' runs the teachers once and caches their outputs in cache_dir
  # ('' = the workdir), so other students reuse them; 'in_step' runs the frozen teachers
  # inside every step. Intermediates (need 'in_step'; each term added with its weight,
  # 0 = off): TinyBERT's hidden-state MSE (learned projections when widths differ) and
  # attention KL over `layer_map` ('uniform', 'last:k' or teacher layers '1,3,5');
  # MiniLM v2's q/k/v relation KL over `relation_layer_map` with `relation_heads`
  # relation heads (0 = the student's heads).
  c.distill = ml_collections.ConfigDict({
      'teachers': '', 'checkpoint': 'best', 'alpha': 0.5, 'temperature': 1.0,
      'cache_dir': '', 'mode': 'cached',
      'hidden_weight': 0.0, 'attention_weight': 0.0, 'relation_weight': 0.0,
      'layer_map': 'uniform', 'relation_layer_map': 'last:1', 'relation_heads': 0})
  c.ema_decay = 0.0          # >0: evaluate an exponential moving average of the params
  return c


def pretraining_defaults(source: str = 'gutenberg', objective: str = 'mlm'
                         ) -> ml_collections.ConfigDict:
  """The trainer's fields for (continued) pre-training on the corpus `source` with
  `objective` ('mlm', 'mlm+nsp', 'mlm+sop', 'clm'): a step budget instead of epochs and
  evaluation on held-out sequences (experiments/configs/pretrain.py starts here)."""
  c = trainer_defaults()
  c.corpus.source, c.corpus.objective = source, objective
  c.max_length = 128
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 0
  c.total_steps = 2000
  c.eval_every = 500
  return c


def general_distillation_defaults(teacher: str = 'minilm-l6', source: str = 'gutenberg',
                                  student: str = '') -> ml_collections.ConfigDict:
  """The trainer's fields for general (task-agnostic) distillation of `teacher` into a
  student cut from it (`student`, a `research/train/student.py` spec; '' = the whole
  teacher) on the corpus `source`: TinyBERT's hidden-state MSE on uniformly mapped layers
  plus MiniLM v2's q/k/v relations of the last layer, no masked-LM loss (alpha = 1).

  `teacher` is a pre-trained checkpoint (alias, folder or Hub id: the student is cut
  from config.model) or a run folder ('runs/x[:best]': cut from config.init_from).
  experiments/configs/general_distill.py starts here; the run folder is then a starting
  point for task runs (`--config.init_from=<run>`).
  """
  c = pretraining_defaults(source, 'mlm')
  folder, _, which = teacher.rpartition(':')
  if which not in ('best', 'latest'):
    folder, which = teacher, 'best'
  if os.path.isdir(os.path.join(folder, 'checkpoints')) or os.path.isdir(
      os.path.join(folder, 'best')):  # a run folder: teacher and student's source
    c.init_from, c.distill.teachers, c.distill.checkpoint = teacher, folder, which
  else:
    c.model, c.distill.teachers = teacher, f'hf:{teacher}'
  c.student = student
  c.distill.mode = 'in_step'
  c.distill.alpha = 1.0          # distillation terms only (the MLM head is not trained)
  c.distill.hidden_weight = 1.0
  c.distill.relation_weight = 1.0
  c.distill.layer_map = 'uniform'
  c.distill.relation_layer_map = 'last:1'
  c.optimizer.learning_rate = 2e-4
  # Evaluation reports the distillation terms' loss on the dev sequences and best/ (what
  # init_from reads) is the student of the lowest one (the masked-LM accuracy of an
  # untrained head says nothing; trainer / distillation.selects_on_dev_loss).
  c.eval_every = 500
  c.checkpoint_every = 500
  return c


def complete(config, *, strict: bool = True) -> ml_collections.ConfigDict:
  """A copy of `config` with every missing field (nested too) set to its default.

  Args:
    config: a trainer config (ConfigDict or dict).
    strict: refuse fields the schema does not know (a misspelt override would otherwise
      be ignored silently); False keeps them (a run's config.json from another version).
  """
  out = ml_collections.ConfigDict(
      config.to_dict() if hasattr(config, 'to_dict') else dict(config))
  unknown = _fill(out, trainer_defaults(), '')
  if unknown and strict:
    hints = []
    known = _paths(trainer_defaults(), '')
    for name in unknown:
      close = difflib.get_close_matches(name, known, n=1)
      hints.append(f'{name}' + (f' (did you mean {close[0]}?)' if close else ''))
    raise ValueError(f'config has field(s) the trainer does not read: {", ".join(hints)}; '
                     'see research/train/defaults.py for the fields')
  if unknown:
    logging.info('config fields from another version, kept but not read: %s', unknown)
  return out


def _fill(config, defaults, prefix: str) -> list[str]:
  """Adds missing fields in place; returns the dotted names of unknown ones."""
  unknown = [f'{prefix}{k}' for k in config if k not in defaults]
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict):
      if not isinstance(config[key], (ml_collections.ConfigDict, dict)):
        raise ValueError(f'config.{prefix}{key} must be a group of fields like '
                         f'{sorted(value)}, got {config[key]!r}')
      unknown += _fill(config[key], value, f'{prefix}{key}.')
  return unknown


def _paths(config, prefix: str) -> list[str]:
  out = []
  for key, value in config.items():
    out.append(f'{prefix}{key}')
    if isinstance(value, ml_collections.ConfigDict):
      out += _paths(value, f'{prefix}{key}.')
  return out


def reset_techniques(config, keys) -> ml_collections.ConfigDict:
  """A copy of `config` with the fields `keys` (the techniques') at their defaults."""
  out = complete(config, strict=False)
  defaults = trainer_defaults()
  for key in keys:
    out[key] = defaults[key]
  return out
