r"""Generate text from a GPT-2-style decoder with the cached, jitted sampler; time it.

    python -m experiments.generate --model path/to/gpt2 --prompt "The meaning of life is" \
        --max_new_tokens 50 --temperature 0.8 --top_k 40
    python -m experiments.generate --model runs/clm:best --prompt "..." --greedy

`--model` is a Hugging Face GPT-2 folder (config.json + weights + tokenizer files) or a
run folder of ours (`runs/x`, `runs/x:latest`) whose model is causal; or a masked LM (a
pre-training run, a BERT-family folder with its MLM head), which writes left to right by
iterative mask prediction (`research/models/mask_predict.py`: no cache, each new token
reruns the whole sequence). Prints each
sample and the speed: the first call compiles, so tokens/s is measured on a second,
identical call (generated tokens of all rows, stop tokens included, per second). The
library side is `research/runs/generation.py`.
"""
from __future__ import annotations

import jax
from absl import app, flags

from research import logs
from research.runs import generation

flags.DEFINE_string('model', None, 'A Hugging Face GPT-2 folder, a run folder (runs/x, '
                    'runs/x:latest) or a Hub id.')
flags.DEFINE_multi_string('prompt', ['The'], 'Prompt text (repeatable: one row each).')
flags.DEFINE_integer('max_new_tokens', 50, 'Tokens to generate per prompt.')
flags.DEFINE_float('temperature', 1.0, 'Sampling temperature (> 0).')
flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely tokens (0 = all).')
flags.DEFINE_float('top_p', 1.0, 'Nucleus mass in (0, 1] (1 = all).')
flags.DEFINE_bool('greedy', False, 'Argmax decoding instead of sampling.')
flags.DEFINE_bool('stop', True, "Stop a row at the tokenizer's eos token.")
flags.DEFINE_integer('num_samples', 1, 'Samples per prompt (rows of one batch).')
flags.DEFINE_integer('seed', 0, 'Sampling seed.')
flags.mark_flags_as_required(['model'])


def main(argv):
  del argv
  logs.setup()
  f = flags.FLAGS
  config, params, tokenizer = generation.load_model(f.model)
  prompts = list(f.prompt) * f.num_samples
  sampling = dict(greedy=f.greedy, temperature=f.temperature, top_k=f.top_k, top_p=f.top_p,
                  seed=f.seed)
  if config.causal:
    result = generation.sample(config, params, tokenizer, prompts,
                               max_new_tokens=f.max_new_tokens, stop=f.stop, **sampling)
  else:  # an encoder: its masked-LM head writes by iterative mask prediction
    model, params, tokenizer = generation.load_masked_lm(f.model)
    result = generation.sample_masked(model, params, tokenizer, prompts,
                                      max_new_tokens=f.max_new_tokens, **sampling)
  for prompt, text in zip(prompts, result['samples']):
    print(f'--- {prompt!r}\n{prompt}{text}\n')
  print(f"{result['new_tokens']} tokens in {result['seconds']:.3f} s: "
        f"{result['tokens_per_s']:.1f} tokens/s (batch {len(prompts)}, "
        f"{jax.devices()[0].platform}; first call with compilation "
        f"{result['first_call_seconds']:.2f} s)")


if __name__ == '__main__':
  app.run(main)
