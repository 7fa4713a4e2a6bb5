"""Left-to-right generation from a masked-LM encoder by iterative mask prediction, jitted.

    logits_at = masked_lm.logits_at_fn(model)   # a MaskedLM / PreTraining TaskModel
    out = mask_predict(logits_at, params, ids, lengths, max_new_tokens=32,
                       mask_id=103, sep_id=102, banned=(0, 100, 101, 102, 103), top_k=40)

An encoder-only BERT has no next-token distribution; the usual way to make it write
(Wang & Cho 2019, "BERT has a mouth, and it must speak") is to append a [MASK], predict
it from the whole visible sequence, write the prediction in its place and repeat. Each
step here: the row's sequence is [CLS] prompt generated-so-far [MASK] [SEP], the model
runs bidirectionally over all of it (there is no cache to reuse: every earlier token's
features change when a token is appended), and the logits at the [MASK] are sampled with
the decoder's own rules (`generate.sample_logits`: greedy, temperature, top-k, top-p).
Special tokens (`banned`) are never sampled, so the text stays text.

Fixed shapes: prompts are *right*-padded in a buffer of width
max prompt length + max_new_tokens + 1 (BERT numbers positions from the first token, so
right padding leaves every row's positions as they would be alone); the attention mask
covers each row's first length + step + 2 tokens. One `lax.fori_loop` runs all steps,
so one compilation serves every call with the same shapes and settings.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.models import generate as gen

# (params, ids [b, w], mask [b, w], positions [b, 1]) -> logits [b, 1, vocab]
LogitsAt = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids [batch, max length] right-padded with pad_id, lengths [batch])."""
  if not sequences or any(len(s) == 0 for s in sequences):
    raise ValueError('give at least one non-empty prompt')
  width = max(len(s) for s in sequences)
  ids = np.full((len(sequences), width), pad_id, np.int32)
  for row, s in enumerate(sequences):
    ids[row, :len(s)] = s
  return ids, np.asarray([len(s) for s in sequences], np.int32)


@functools.partial(jax.jit, static_argnames=('logits_at', 'max_new_tokens', 'greedy', 'top_k',
                                             'nucleus'))
def _mask_predict(params, ids, lengths, rng, temperature, top_p, mask_id, sep_id, banned, *,
                  logits_at: LogitsAt, max_new_tokens: int, greedy: bool, top_k: int,
                  nucleus: bool) -> jax.Array:
  batch, width = ids.shape
  rows = jnp.arange(batch)
  columns = jnp.arange(width)[None, :]
  sample = functools.partial(gen.sample_logits, greedy=greedy, temperature=temperature,
                             top_k=top_k, top_p=top_p if nucleus else 1.0)

  def body(step, carry):
    ids, tokens, rng = carry
    position = lengths + step  # where this step's [MASK] goes, per row
    ids = ids.at[rows, position].set(mask_id).at[rows, position + 1].set(sep_id)
    mask = (columns < (position + 2)[:, None]).astype(jnp.int32)
    logits = logits_at(params, ids, mask, position[:, None])[:, 0].astype(jnp.float32)
    logits = logits.at[:, banned].set(-jnp.inf)
    rng, key = jax.random.split(rng)
    token = sample(logits, key)
    return ids.at[rows, position].set(token), tokens.at[:, step].set(token), rng

  tokens = jnp.zeros((batch, max_new_tokens), jnp.int32)
  _, tokens, _ = jax.lax.fori_loop(0, max_new_tokens, body, (ids, tokens, rng))
  return tokens


def mask_predict(logits_at: LogitsAt, params: Any, prompt_ids, prompt_lengths, *,
                 max_new_tokens: int, mask_id: int, sep_id: int, banned: Sequence[int] = (),
                 greedy: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, rng: jax.Array | None = None,
                 max_positions: int | None = None) -> jax.Array:
  """Continues right-padded prompts by `max_new_tokens` tokens each; see the module doc.

  Args:
    logits_at: the masked LM's logits at given positions (a module-level function or
      one kept alive between calls: it is a static argument of the jitted loop).
    params: what `logits_at` takes first.
    prompt_ids: int [batch, width], each row [CLS] + prompt tokens, right-padded.
    prompt_lengths: int [batch], real tokens per row (the [CLS] included).
    max_new_tokens: tokens to generate per row.
    mask_id, sep_id: the tokenizer's [MASK] and [SEP] ids.
    banned: ids never sampled (the special tokens).
    greedy, temperature, top_k, top_p: as `generate.generate`.
    rng: PRNG key for sampling (default PRNGKey(0)).
    max_positions: the model's position table; the longest row must fit in it.

  Returns:
    int32 [batch, max_new_tokens], the generated tokens.
  """
  gen.check_sampling(greedy, temperature, top_k, top_p)
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be a positive integer, got {max_new_tokens!r}')
  ids = np.asarray(prompt_ids)
  lengths = np.asarray(prompt_lengths)
  if ids.ndim != 2 or lengths.shape != ids.shape[:1]:
    raise ValueError(f'prompt_ids must be [batch, width] with one length per row; got '
                     f'{ids.shape} and lengths {lengths.shape}')
  if lengths.min() < 1 or lengths.max() > ids.shape[1]:
    raise ValueError(f'prompt_lengths must be in [1, {ids.shape[1]}], got {lengths.tolist()}')
  width = int(lengths.max()) + max_new_tokens + 1  # + the final [SEP]
  if max_positions is not None and width > max_positions:
    raise ValueError(f'the longest prompt ({int(lengths.max())} tokens) + max_new_tokens '
                     f'{max_new_tokens} + [SEP] exceeds the position table '
                     f'({max_positions} positions)')
  buffer = np.zeros((ids.shape[0], width), np.int32)
  buffer[:, :ids.shape[1]] = ids
  if greedy:  # unused settings must not cause recompilations
    temperature, top_k, top_p = 1.0, 0, 1.0
  return _mask_predict(
      params, jnp.asarray(buffer), jnp.asarray(lengths, jnp.int32),
      jax.random.PRNGKey(0) if rng is None else rng, jnp.float32(temperature),
      jnp.float32(top_p), jnp.int32(mask_id), jnp.int32(sep_id),
      jnp.asarray(sorted(set(banned)) or [mask_id], jnp.int32), logits_at=logits_at,
      max_new_tokens=int(max_new_tokens), greedy=bool(greedy), top_k=int(top_k),
      nucleus=bool(top_p < 1.0))
