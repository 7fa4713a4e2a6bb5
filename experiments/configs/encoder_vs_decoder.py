r"""Which architecture to pre-train for generation: an MLM encoder or a GPT-style decoder.

    # CPU-sized (4 layers x 256 each, tinyshakespeare, 500 steps of 32 x 64):
    python -m experiments.encoder_vs_decoder --out runs/encoder_vs_decoder \
        --config experiments/configs/encoder_vs_decoder.py
    # larger (6 layers x 512, 10,000 steps of 64 x 128), for an accelerator:
    python -m experiments.encoder_vs_decoder --out runs/encoder_vs_decoder_full \
        --config experiments/configs/encoder_vs_decoder.py:size=full
    # tiny smoke run:
    python -m experiments.encoder_vs_decoder --out /tmp/evd \
        --config experiments/configs/encoder_vs_decoder.py:runlocal

Arguments: size=cpu | full, runlocal. Every field can be overridden with
--config.<field>=<value>.

Both models are trained from scratch with the same tokenizer (config.model's), the same
width and depth (`scratch`), corpus, steps, batch, length, optimizer and seed; the
decoder adds `decoder` (GPT-2's block: causal attention, pre-LN, no embedding
LayerNorm; its output is tied to the word embeddings, as the MLM head's decoder is).
The last `heldout_share` of the corpus's documents is held out of both training sets
and scored: perplexity for the decoder, pseudo-perplexity for the encoder (different
measures; see research/evaluate/lm_perplexity.py). Both then continue the same held-out
prompts, the decoder with its key/value cache, the encoder by iterative mask prediction
(research/models/mask_predict.py), with the same sampling settings; samples are
printed side by side with generated tokens/s.
"""
import ml_collections

from experiments.configs import common

SIZES = {
    # (shared scratch architecture, steps, batch, max_length)
    'cpu': ('num_layers=4,hidden_size=256,num_heads=4,intermediate_size=1024', 500, 32, 64),
    'full': ('num_layers=6,hidden_size=512,num_heads=8,intermediate_size=2048', 10000, 64,
             128),
}


def get_config(arg=None):
  args = common.parse_arg(arg, size='cpu', runlocal=False)
  if args.size not in SIZES:
    raise ValueError(f'size={args.size!r}; expected one of {sorted(SIZES)}')
  scratch, steps, batch, max_length = SIZES[args.size]
  c = ml_collections.ConfigDict()
  c.model = 'minilm-l6'    # tokenizer and architecture family (weights unused)
  c.scratch = scratch + ',use_pooler=False'   # no NSP/SOP head reads a pooler here
  c.decoder = 'causal=True,norm_position=pre,embedding_norm=False'
  c.corpus = 'tinyshakespeare'   # a staged corpus name, or a .txt file or folder
  c.documents = ''         # 'blank_lines' | 'file' | '' = the staged corpus's own
  c.heldout_share = 0.05   # the corpus's last documents, held out of both training sets
  c.steps = steps
  c.batch_size = batch
  c.max_length = max_length
  c.learning_rate = 1e-3
  c.warmup_ratio = 0.1
  c.dev_sequences = 64     # each run's own dev sample (from its training documents)
  c.eval_sequences = 128   # held-out chunks scored (of max_length - 2 tokens each)
  c.num_prompts = 4        # held-out chunks whose first tokens are the prompts
  c.prompt_tokens = 8
  c.max_new_tokens = 32
  c.temperature = 1.0
  c.top_k = 40
  c.top_p = 1.0
  c.seed = 0
  if args.runlocal:
    c.scratch = 'num_layers=1,hidden_size=32,num_heads=2,intermediate_size=64,use_pooler=False'
    c.steps, c.batch_size, c.max_length = 4, 8, 32
    c.dev_sequences, c.eval_sequences, c.num_prompts = 4, 4, 2
    c.prompt_tokens, c.max_new_tokens = 4, 6
  return c
