"""Text generation from saved runs and Hugging Face folders, timed.

    config, params, tokenizer = load_model('runs/clm:best')        # or a GPT-2 folder
    result = sample(config, params, tokenizer, ['The meaning of life is'], max_new_tokens=50)
    model, params, tokenizer = load_masked_lm('runs/mlm')   # or a HF folder with its MLM head
    result = sample_masked(model, params, tokenizer, ['The'], max_new_tokens=20)

A causal model decodes with the cached, jitted sampler (`research/models/generate.py`);
a masked LM writes left to right by iterative mask prediction
(`research/models/mask_predict.py`: no cache, each new token reruns the sequence). The
first call compiles, so tokens/s is measured on a second, identical call
(`speed.timed_twice`: generated tokens of all rows, stop tokens included, per second).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

from research.checkpoints import hub, load_pretrained, load_tokenizer
from research.checkpoints.hf_pretraining_heads import load_pretraining_model
from research.evaluate import speed
from research.models import generate as gen
from research.models import mask_predict
from research.objectives import masked_lm
from research.train import saved_runs


def load_model(ref: str) -> tuple[Any, Any, Any]:
  """(encoder config, encoder params, tokenizer) of a HF folder or a run folder."""
  folder = ref.rpartition(':')[0] if ref.endswith((':best', ':latest')) else ref
  if os.path.isfile(os.path.join(folder, 'config.json')) and not os.path.isfile(
      os.path.join(folder, 'model.json')):
    config, params = load_pretrained(folder)
    return config, params, load_tokenizer(folder)
  if os.path.isfile(os.path.join(folder, 'model.json')):
    workdir, which = saved_runs.parse_ref(ref)
    model = saved_runs.read_model(workdir)
    params, _ = saved_runs.restore_params(workdir, which)
    return model.encoder, params['encoder'], saved_runs.run_tokenizer(workdir)
  folder = hub.resolve(ref)  # a Hub id, where the network allows
  config, params = load_pretrained(folder)
  return config, params, load_tokenizer(folder)


def sample(config, params, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
        greedy: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
        seed: int = 0, stop: bool = True) -> dict[str, Any]:
  """Samples continuations of `prompts`; returns {'samples', 'tokens_per_s', ...}."""
  if not prompts:
    raise ValueError('give at least one prompt')
  # Bare tokens: a decoder trains on packed text without [CLS] / [SEP] (a WordPiece
  # tokenizer would add them; a GPT-2 one adds nothing either way).
  encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
  if any(not e for e in encoded):
    raise ValueError('a prompt tokenizes to nothing; give non-empty prompts')
  ids, mask = gen.left_pad(encoded, config.pad_token_id)
  eos = getattr(tokenizer, 'eos_token_id', None)
  kwargs = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                top_k=top_k, top_p=top_p, rng=jax.random.PRNGKey(seed),
                stop_token=eos if stop and eos is not None and eos < config.vocab_size
                else None)
  out, seconds, first = speed.timed_twice(lambda: gen.generate(config, params, ids, mask, **kwargs))
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  samples = [tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths)]
  return {'samples': samples, 'new_tokens': int(lengths.sum()), 'seconds': seconds,
          'tokens_per_s': float(lengths.sum()) / seconds, 'first_call_seconds': first}


def sample_masked(model, params, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
               greedy: bool = False, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0) -> dict[str, Any]:
  """`sample` for a masked-LM encoder: left to right by iterative mask prediction (no cache,
  no stop token; special tokens are never sampled). Same result keys as `sample`."""
  encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
  if not prompts or any(not e for e in encoded):
    raise ValueError('give non-empty prompts')
  ids, lengths = mask_predict.right_pad([[tokenizer.cls_token_id] + e for e in encoded],
                                        tokenizer.pad_token_id or 0)
  logits_at = masked_lm.logits_at_fn(model)

  tokens, seconds, first = speed.timed_twice(lambda: mask_predict.mask_predict(
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


def load_masked_lm(ref: str) -> tuple[Any, Any, Any]:
  """(model, params, tokenizer) of a masked LM: a run folder of ours whose objective is
  masked_lm / pretraining (`runs/x`, `runs/x:latest`), or a Hugging Face checkpoint folder
  or Hub id loaded with its MLM head (`load_pretraining_model`; a bare encoder gets a
  fresh, untrained head and a logged note)."""
  workdir, which = saved_runs.parse_ref(ref)
  if os.path.isfile(os.path.join(workdir, saved_runs.MODEL_FILE)):
    model = saved_runs.read_model(workdir)
    if not callable(getattr(model.objective, 'vocabulary_logits', None)):
      raise ValueError(f'{ref}: its objective is {model.objective.kind!r}, not a masked LM; '
                       'give a pre-training run (experiments/configs/pretrain.py)')
    params, _ = saved_runs.restore_params(workdir, which)
    return model, params, saved_runs.run_tokenizer(workdir)
  model, params = load_pretraining_model(ref, pair='')
  return model, params, load_tokenizer(ref)
