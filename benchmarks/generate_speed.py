r"""Generation speed: our cached, jitted decoder against transformers' `generate`.

    python benchmarks/generate_speed.py                       # 4-layer, 256-wide GPT-2
    python benchmarks/generate_speed.py --layers 12 --hidden 768 --vocab 50257 --batch 8
    python benchmarks/generate_speed.py --top_k 40            # sampling instead of greedy

One random GPT-2 (`GPT2LMHeadModel`, seed 0) is saved once and loaded by both sides, so
both decode the same weights from the same left-padded prompts (random ids, rows of
different lengths), greedily (or, with `--top_k K`, sampling from the top K at
temperature 1), for exactly `--new_tokens` tokens (no stop token):
- ours: `research.models.generate.generate` (prefill + `lax.while_loop`, key/value cache
  preallocated, one compilation done before timing);
- torch: `model.generate(do_sample=False, min_new_tokens=max_new_tokens, use_cache=True)`
  under `inference_mode`, with the same number of threads.
Rounds alternate between the two so drifting load hits both alike; each side's speed is
the median over rounds of generated tokens (batch x new tokens) per second, prefill
included. Both sides' tokens are compared (they should agree; a mismatch is printed,
since near-ties of random weights can flip in float32). The last line printed is one
JSON object {"ours": tokens/s, "torch": tokens/s, "ratio": ours / torch}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

THREADS = int(os.environ.get('BENCH_THREADS', '2'))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from research.checkpoints import load_pretrained  # pylint: disable=wrong-import-position
from research.models.generate import generate, left_pad  # pylint: disable=wrong-import-position
from research.evaluate import speed  # pylint: disable=wrong-import-position


def make_checkpoint(folder: str, args) -> None:
  """A random GPT2LMHeadModel of the benchmark's size, saved to `folder`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  eos = args.vocab - 1
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=args.vocab, n_positions=args.prompt + args.new_tokens, n_embd=args.hidden,
      n_layer=args.layers, n_head=args.heads, bos_token_id=eos, eos_token_id=eos,
      pad_token_id=eos))
  model.save_pretrained(folder)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--layers', type=int, default=4)
  p.add_argument('--hidden', type=int, default=256)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--vocab', type=int, default=8192)
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--prompt', type=int, default=16, help='longest prompt (tokens)')
  p.add_argument('--new_tokens', type=int, default=64)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--top_k', type=int, default=0,
                 help='> 0: both sides sample from the top k (temperature 1) instead of greedy')
  args = p.parse_args(argv)
  sampling = args.top_k > 0

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(THREADS)
  rng = np.random.default_rng(0)
  lengths = [max(1, args.prompt - 3 * i) for i in range(args.batch)]
  prompts = [rng.integers(0, args.vocab - 1, n).tolist() for n in lengths]

  with tempfile.TemporaryDirectory() as folder:
    make_checkpoint(folder, args)
    config, params = load_pretrained(folder)
    torch_model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
  params = jax.device_put(params)
  ids, mask = left_pad(prompts, config.pad_token_id)
  total = args.batch * args.new_tokens

  def ours():
    return jax.block_until_ready(generate(
        config, params, ids, mask, max_new_tokens=args.new_tokens, greedy=not sampling,
        top_k=args.top_k, rng=jax.random.PRNGKey(0)))

  t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(
      mask.astype(np.int64))

  def reference():
    with torch.inference_mode():
      return torch_model.generate(input_ids=t_ids, attention_mask=t_mask, do_sample=sampling,
                                  top_k=args.top_k if sampling else None, top_p=None,
                                  temperature=None, max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, use_cache=True)

  out, first = speed.timed_call(ours)
  ours_tokens = np.asarray(out.tokens)
  print(f'ours: first call (compilation) {first:.2f} s')
  torch_tokens = reference()[:, ids.shape[1]:].numpy()
  agree = float((ours_tokens == torch_tokens).mean())
  if not sampling:  # sampled tokens come from different random streams
    print(f'greedy tokens identical to transformers: {agree:.1%}')
  seconds = speed.step_medians({'ours': ours, 'torch': reference}, warmup=0,
                               rounds=args.rounds, per_round=1)
  result = {name: statistics.median(total / t for t in v) for name, v in seconds.items()}
  print(f'{"top-" + str(args.top_k) + " sampling" if sampling else "greedy"}: '
        f'{args.layers} layers x {args.hidden} wide, vocab {args.vocab}, batch {args.batch}, '
        f'prompts <= {args.prompt}, {args.new_tokens} new tokens, {THREADS} torch threads, '
        f'jax on {jax.devices()[0].platform}')
  for name, value in result.items():
    print(f'  {name:6s} {value:10.1f} tokens/s')
  print(json.dumps({'ours': round(result['ours'], 1), 'torch': round(result['torch'], 1),
                    'ratio': round(result['ours'] / result['torch'], 3),
                    'top_k': args.top_k}))


if __name__ == '__main__':
  main()
