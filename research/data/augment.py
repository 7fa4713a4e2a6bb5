"""TinyBERT's data augmentation: words replaced by a masked LM's candidates.

    mlm = masked_lm.logits_at_fn(model)   # a MaskedLM / PreTraining TaskModel
    new = augment_examples(examples, tokenizer, mlm, params, per_example=20)

Jiao et al. 2020 (TinyBERT, section 3.1 and algorithm 1) enlarge a task's train set for
distillation: for every word of a sentence that is a single word piece, BERT's masked
LM, with that word masked, proposes its `top_k` (15) most likely pieces; each augmented
copy then replaces each such word with probability `replace_prob` (0.4) by one of them
drawn uniformly; `per_example` (20) copies per sentence. Words of several pieces took
GloVe neighbours in the paper; no word vectors ship here, so they are kept as they are.
Pieces that continue a word ('##...') and special tokens are never proposed, nor the
word itself.

The copies have no gold label: the teacher labels them (`experiments/augment.py` writes
its prediction, and distillation with `distill.alpha=1` learns only the teacher's soft
targets on them, as TinyBERT does). Texts are edited in place by character offsets, so
spacing, punctuation and the case of the other words stay as they were. Masked-LM rows
are batched at a few padded widths (multiples of 32), so the jitted forward compiles
once per width.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TEXT_FIELDS = ('text_a', 'text_b')
# (params, ids [rows, width], mask [rows, width], positions [rows, 1]) -> [rows, 1, vocab]
LogitsAt = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass
class Word:
  """One word of a text: its character span and the word pieces of it."""
  start: int
  end: int
  piece: int | None          # the token index of its only piece; None = several pieces
  candidates: list[str] = dataclasses.field(default_factory=list)


def words_of(text: str, tokenizer, max_length: int) -> tuple[list[Word], list[int]]:
  """(words, token ids with [CLS] / [SEP]) of `text`, truncated to `max_length` tokens."""
  encoded = tokenizer(text, truncation=True, max_length=max_length,
                      return_offsets_mapping=True)
  words: dict[int, list[int]] = {}
  for index, word in enumerate(encoded.word_ids()):
    if word is not None:
      words.setdefault(word, []).append(index)
  offsets = encoded['offset_mapping']
  out = [Word(offsets[pieces[0]][0], offsets[pieces[-1]][1],
              pieces[0] if len(pieces) == 1 else None) for pieces in words.values()]
  return out, list(encoded['input_ids'])


def _banned_ids(tokenizer) -> np.ndarray:
  """Ids never proposed: special tokens and pieces that continue a word."""
  vocab = tokenizer.get_vocab()
  banned = {i for t, i in vocab.items() if t.startswith('##')}
  banned |= set(tokenizer.all_special_ids)
  return np.asarray(sorted(banned), np.int32)


def propose(texts: Sequence[str], tokenizer, logits_at: LogitsAt, params: Any, *,
            top_k: int = 15, max_length: int = 128, batch_size: int = 64
            ) -> list[list[Word]]:
  """The words of each text, each single-piece word with its `top_k` candidates."""
  if top_k < 1:
    raise ValueError(f'top_k must be >= 1, got {top_k}')
  mask_id = tokenizer.mask_token_id
  if mask_id is None:
    raise ValueError('augmentation needs a tokenizer with a [MASK] token')
  banned = jnp.asarray(_banned_ids(tokenizer))

  @jax.jit
  def top(params, ids, mask, positions, original):
    logits = logits_at(params, ids, mask, positions[:, None])[:, 0].astype(jnp.float32)
    logits = logits.at[:, banned].set(-jnp.inf)
    logits = logits.at[jnp.arange(len(ids)), original].set(-jnp.inf)
    return jax.lax.top_k(logits, top_k)[1]

  parsed = [words_of(t, tokenizer, max_length) for t in texts]
  # One row per single-piece word: (text index, word index, ids, masked position).
  rows = [(t, w, ids, word.piece) for t, (words, ids) in enumerate(parsed)
          for w, word in enumerate(words) if word.piece is not None]
  by_width: dict[int, list] = {}
  for row in rows:
    by_width.setdefault(-(-len(row[2]) // 32) * 32, []).append(row)
  # One masked-LM row per word: a full train set is ~10^5 rows, so say how far it is.
  logging.info('augment: %d masked-LM rows for %d texts', len(rows), len(texts))
  done, started, last_note = 0, time.perf_counter(), time.perf_counter()
  for width, group in by_width.items():
    for start in range(0, len(group), batch_size):
      if time.perf_counter() - last_note > 60:
        last_note = time.perf_counter()
        rate = done / (last_note - started)
        logging.info('augment: %d / %d rows, %.0f rows/s, ~%.0f min left', done, len(rows),
                     rate, (len(rows) - done) / max(rate, 1e-9) / 60)
      chunk = group[start:start + batch_size]
      n = len(chunk)
      ids = np.zeros((batch_size, width), np.int32)
      mask = np.zeros((batch_size, width), np.int32)
      positions = np.zeros(batch_size, np.int32)
      original = np.zeros(batch_size, np.int32)
      for r, (_, _, row_ids, at) in enumerate(chunk):
        ids[r, :len(row_ids)], mask[r, :len(row_ids)] = row_ids, 1
        ids[r, at], positions[r], original[r] = mask_id, at, row_ids[at]
      ids[n:], mask[n:] = ids[0], mask[0]  # padding rows copy a real one (ignored)
      best = np.asarray(top(params, jnp.asarray(ids), jnp.asarray(mask),
                            jnp.asarray(positions), jnp.asarray(original)))[:n]
      for (t, w, _, _), choice in zip(chunk, best):
        parsed[t][0][w].candidates = tokenizer.convert_ids_to_tokens(choice.tolist())
      done += n
  return [words for words, _ in parsed]


def replace_words(text: str, words: Sequence[Word], rng: np.random.Generator,
                  replace_prob: float) -> str:
  """`text` with each word that has candidates replaced by one with `replace_prob`."""
  pieces, last = [], 0
  for word in words:
    if word.candidates and rng.random() < replace_prob:
      pieces += [text[last:word.start], word.candidates[rng.integers(len(word.candidates))]]
      last = word.end
  return ''.join(pieces) + text[last:]


def augment_examples(examples: Sequence[dict], tokenizer, logits_at: LogitsAt, params: Any,
                     *, per_example: int = 20, replace_prob: float = 0.4, top_k: int = 15,
                     seed: int = 0, max_length: int = 128, batch_size: int = 64
                     ) -> list[dict]:
  """`per_example` augmented copies of each example (its texts edited; no 'label').

  Each copy keeps the example's other fields except 'label' and 'idx', and gets
  'source_idx' (the position of its example). Copies equal to their source text (no
  word drawn) or to an earlier copy are dropped, so fewer may come back.
  """
  if per_example < 1:
    raise ValueError(f'per_example must be >= 1, got {per_example}')
  if not 0.0 < replace_prob <= 1.0:
    raise ValueError(f'replace_prob must be in (0, 1], got {replace_prob}')
  fields = [f for f in TEXT_FIELDS if examples and f in examples[0]]
  if not fields:
    raise ValueError('augmentation needs examples with a text_a field (GLUE-style tasks)')
  texts = [e[f] for e in examples for f in fields]
  words = propose(texts, tokenizer, logits_at, params, top_k=top_k, max_length=max_length,
                  batch_size=batch_size)
  rng = np.random.default_rng(seed)
  out = []
  for i, example in enumerate(examples):
    own = words[i * len(fields):(i + 1) * len(fields)]
    seen = {tuple(example[f] for f in fields)}
    for _ in range(per_example):
      new = tuple(replace_words(example[f], w, rng, replace_prob) for f, w in zip(fields, own))
      if new in seen:
        continue
      seen.add(new)
      copy = {k: v for k, v in example.items() if k not in ('label', 'idx')}
      out.append({**copy, **dict(zip(fields, new)), 'source_idx': i})
  return out
