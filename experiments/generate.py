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
identical call (generated tokens of all rows, stop tokens included, per second).
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags

from research.models import generate as gen


def load_model(ref: str) -> tuple[Any, Any, Any]:
  """(encoder config, encoder params, tokenizer) of a HF folder or a run folder."""
  from research.checkpoints import hub, load_pretrained, load_tokenizer  # pylint: disable=g-import-not-at-top
  folder = ref.rpartition(':')[0] if ref.endswith((':best', ':latest')) else ref
  if os.path.isfile(os.path.join(folder, 'config.json')) and not os.path.isfile(
      os.path.join(folder, 'model.json')):
    config, params = load_pretrained(folder)
    return config, params, load_tokenizer(folder)
  if os.path.isfile(os.path.join(folder, 'model.json')):
    from research.train import saved_runs  # pylint: disable=g-import-not-at-top
    workdir, which = saved_runs.parse_ref(ref)
    model = saved_runs.read_model(workdir)
    params, _ = saved_runs.restore_params(workdir, which)
    return model.encoder, params['encoder'], saved_runs.run_tokenizer(workdir)
  folder = hub.resolve(ref)  # a Hub id, where the network allows
  config, params = load_pretrained(folder)
  return config, params, load_tokenizer(folder)


def timed_twice(call) -> tuple[Any, float, float]:
  """(result, seconds of a second call, seconds of the first): the first compiles."""
  start = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - start
  start = time.perf_counter()
  result = jax.block_until_ready(call())
  return result, time.perf_counter() - start, first


def run(config, params, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
        greedy: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
        seed: int = 0, stop: bool = True) -> dict[str, Any]:
  """Samples continuations of `prompts`; returns {'samples', 'tokens_per_s', ...}."""
  if not prompts:
    raise ValueError('give at least one --prompt')
  encoded = [tokenizer.encode(p) for p in prompts]
  if any(not e for e in encoded):
    raise ValueError('a prompt tokenizes to nothing; give non-empty prompts')
  ids, mask = gen.left_pad(encoded, config.pad_token_id)
  eos = getattr(tokenizer, 'eos_token_id', None)
  kwargs = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                top_k=top_k, top_p=top_p, rng=jax.random.PRNGKey(seed),
                stop_token=eos if stop and eos is not None and eos < config.vocab_size
                else None)
  out, seconds, first = timed_twice(lambda: gen.generate(config, params, ids, mask, **kwargs))
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  samples = [tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths)]
  return {'samples': samples, 'new_tokens': int(lengths.sum()), 'seconds': seconds,
          'tokens_per_s': float(lengths.sum()) / seconds, 'first_call_seconds': first}


def run_masked(model, params, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
               greedy: bool = False, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0) -> dict[str, Any]:
  """`run` for a masked-LM encoder: left to right by iterative mask prediction (no cache,
  no stop token; special tokens are never sampled). Same result keys as `run`."""
  from research.models import mask_predict  # pylint: disable=g-import-not-at-top
  from research.objectives import masked_lm  # pylint: disable=g-import-not-at-top
  encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
  if not prompts or any(not e for e in encoded):
    raise ValueError('give non-empty prompts')
  ids, lengths = mask_predict.right_pad([[tokenizer.cls_token_id] + e for e in encoded],
                                        tokenizer.pad_token_id or 0)
  logits_at = masked_lm.logits_at_fn(model)

  tokens, seconds, first = timed_twice(lambda: mask_predict.mask_predict(
      logits_at, params, ids, lengths, max_new_tokens=max_new_tokens,
      mask_id=tokenizer.mask_token_id, sep_id=tokenizer.sep_token_id,
      banned=tokenizer.all_special_ids, greedy=greedy, temperature=temperature,
      top_k=top_k, top_p=top_p, rng=jax.random.PRNGKey(seed),
      max_positions=model.encoder.max_length))
  tokens = np.asarray(tokens)
  samples = [' ' + tokenizer.decode(row.tolist()) for row in tokens]
  return {'samples': samples, 'tokens': tokens, 'new_tokens': int(tokens.size),
          'seconds': seconds, 'tokens_per_s': tokens.size / seconds,
          'first_call_seconds': first}


def main(argv):
  del argv
  f = flags.FLAGS
  config, params, tokenizer = load_model(f.model)
  prompts = list(f.prompt) * f.num_samples
  sampling = dict(greedy=f.greedy, temperature=f.temperature, top_k=f.top_k, top_p=f.top_p,
                  seed=f.seed)
  if config.causal:
    result = run(config, params, tokenizer, prompts, max_new_tokens=f.max_new_tokens,
                 stop=f.stop, **sampling)
  else:  # an encoder: its masked-LM head writes by iterative mask prediction
    from research.train import saved_runs  # pylint: disable=g-import-not-at-top
    model, params, tokenizer = saved_runs.load_masked_lm(f.model)
    result = run_masked(model, params, tokenizer, prompts, max_new_tokens=f.max_new_tokens,
                        **sampling)
  for prompt, sample in zip(prompts, result['samples']):
    print(f'--- {prompt!r}\n{prompt}{sample}\n')
  print(f"{result['new_tokens']} tokens in {result['seconds']:.3f} s: "
        f"{result['tokens_per_s']:.1f} tokens/s (batch {len(prompts)}, "
        f"{jax.devices()[0].platform}; first call with compilation "
        f"{result['first_call_seconds']:.2f} s)")


if __name__ == '__main__':
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
  app.run(main)
