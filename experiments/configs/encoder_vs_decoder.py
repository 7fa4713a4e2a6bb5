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
from experiments.configs import common
from research.runs import encoder_vs_decoder


def get_config(arg=None):
  args = common.parse_arg(arg, size='cpu', runlocal=False)
  c = encoder_vs_decoder.defaults(args.size)
  if args.runlocal:
    c.scratch = 'num_layers=1,hidden_size=32,num_heads=2,intermediate_size=64,use_pooler=False'
    c.steps, c.batch_size, c.max_length = 4, 8, 32
    c.dev_sequences, c.eval_sequences, c.num_prompts = 4, 4, 2
    c.prompt_tokens, c.max_new_tokens = 4, 6
  return c
