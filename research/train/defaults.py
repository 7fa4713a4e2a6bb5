"""Every field the trainer reads, with safe defaults (experiment configs start here)."""
from __future__ import annotations

import ml_collections


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
  c.ema_decay = 0.0          # >0: evaluate an exponential moving average of the params
  c.freeze = 'full'
  # Quantization-aware training: '' = off, else a spec such as 'w8,a8' or 'w4,a8,token'
  # (research/transforms/quantize.py); quant_attention also fake-quantizes the attention
  # score and context products; quant_full fake-quantizes what fully quantized BERT
  # does (attention products, embedding tables and output, softmax, GELU, LayerNorms).
  c.quant = ''
  c.quant_attention = False
  c.quant_full = False
  c.dtype = 'float32'
  c.seed = 0
  c.log_every = 50
  c.eval_every = 0           # 0 = once per epoch
  c.checkpoint_every = 0     # 0 = at every evaluation
  c.keep_checkpoints = 2
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1})
  # Distillation from saved runs: comma-separated workdirs whose outputs on the train set
  # become soft targets, weighted alpha against the labels; '' = off. mode 'cached' runs
  # the teachers once and caches their outputs in cache_dir ('' = the workdir), so other
  # students reuse them; 'in_step' runs the frozen teachers inside every train step.
  # A teacher 'hf:<folder or Hub id>' is a fine-tuned Hugging Face classifier.
  # Intermediates (need mode 'in_step'; research/transforms/distill_intermediate.py), each
  # term added with its weight (0 = off): TinyBERT's hidden-state MSE (with learned
  # projections when widths differ) and attention KL over `layer_map` ('uniform',
  # 'last:k' or teacher layers '1,3,5'); MiniLM v2's q/k/v relation KL over
  # `relation_layer_map` with `relation_heads` relation heads (0 = the student's heads).
  c.distill = ml_collections.ConfigDict({
      'teachers': '', 'checkpoint': 'best', 'alpha': 0.5, 'temperature': 1.0,
      'cache_dir': '', 'mode': 'cached',
      'hidden_weight': 0.0, 'attention_weight': 0.0, 'relation_weight': 0.0,
      'layer_map': 'uniform', 'relation_layer_map': 'last:1', 'relation_heads': 0})
  # Gradual unstructured pruning (research/transforms/sparsity.py): target = final sparsity
  # of each site (0.0 = off), reached by Zhu & Gupta's cubic schedule between the begin and
  # end fractions of training, masks recomputed every `frequency` steps; method
  # 'magnitude' | 'movement'; scope 'layer' | 'global' threshold; sites a regex over param
  # paths ('' = the dense kernels of the encoder's attention and MLP projections).
  c.sparsity = ml_collections.ConfigDict({
      'target': 0.0, 'method': 'magnitude', 'begin': 0.1, 'end': 0.7, 'frequency': 10,
      'sites': '', 'scope': 'layer'})
  c.optimizer = ml_collections.ConfigDict({
      'name': 'adamw', 'learning_rate': 1e-4, 'warmup_ratio': 0.06, 'schedule': 'linear',
      'weight_decay': 0.01, 'clip_norm': 1.0,
      # micro-batches of batch_size per update: an update sees batch_size * this rows
      'accumulate_steps': 1,
      # layer-wise lr decay; 1.0 = off (a float so --config.optimizer.llrd=0.9 works)
      'llrd': 1.0})
  return c
