"""BERT masking for masked-LM pre-training, drawn anew every epoch (RoBERTa's dynamic masking).

    ids, labels = mask_tokens(input_ids, special, example_rng(seed, epoch, index),
                              mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer))
    batches = MaskedBatches(BatchIterator(features, 32, ...), mask_id=..., vocab_size=...)

`mask_tokens` is a pure function of (token ids, special-token mask, rng): it picks
round(rate * n) of the n maskable tokens of a sequence (at least one; BERT's
`num_to_predict`), replaces 80 % of them by [MASK], 10 % by a random token and leaves
10 % unchanged; labels hold the original ids there and IGNORE_INDEX (-100) elsewhere.
Special tokens and padding are never picked. With whole-word masking (`word_starts`) the
picks are whole words: every sub-token of a picked word is predicted, and words that
would overshoot the budget are skipped (as BERT's `create_masked_lm_predictions`).

Masking happens here on the host, not in the jitted step: whole-word masking needs the
tokenizer's word boundaries, the rng is a function of (seed, epoch, example index) so a
resumed run (the batch iterator's `state_dict`) draws exactly the masks it would have,
and the train step stays the generic one (`TaskLoss(objective)` on a batch with labels).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from research.data.encoded import IGNORE_INDEX

# Keeps mask draws apart from other per-(seed, epoch) streams (the batch order).
_STREAM = 0x6D6C6D


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The rng of one example's masks in one epoch (epoch -1 = a fixed dev masking)."""
  return np.random.default_rng([_STREAM, int(seed), int(epoch) + 1, int(index)])


def word_starts_from_tokens(tokens: list[str]) -> np.ndarray:
  """bool [n]: True where a WordPiece token starts a word (no '##' continuation)."""
  return np.asarray([not t.startswith('##') for t in tokens], bool)


def word_starts_from_word_ids(word_ids: list[int | None]) -> np.ndarray:
  """bool [n] from a fast tokenizer's `word_ids()`: a token starts a word when its word
  id differs from the previous token's (None, i.e. special tokens, always start)."""
  starts = np.ones(len(word_ids), bool)
  for i in range(1, len(word_ids)):
    starts[i] = word_ids[i] is None or word_ids[i] != word_ids[i - 1]
  return starts


def _check(rate: float, mask_prob: float, random_prob: float) -> None:
  if not 0.0 < rate < 1.0:
    raise ValueError(f'masking rate must be in (0, 1), got {rate}')
  if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1:
    raise ValueError(f'mask_prob={mask_prob} and random_prob={random_prob} must be >= 0 '
                     'and sum to at most 1')


def _pick_words(candidates: np.ndarray, starts: np.ndarray, target: int,
                rng: np.random.Generator) -> np.ndarray:
  """Positions of whole words, in random order, adding up to at most `target` tokens."""
  starts = starts[candidates].copy()
  starts[0] = True  # a sequence cannot open with a continuation
  word = np.cumsum(starts) - 1
  sizes = np.bincount(word)
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  chosen, total = [], 0
  for w in rng.permutation(len(sizes)):
    if total >= target:
      break
    if total + sizes[w] > target:  # whole words only: skip one that overshoots
      continue
    chosen.append(candidates[bounds[w]:bounds[w + 1]])
    total += sizes[w]
  if not chosen:  # every word is longer than the budget: take the shortest one
    w = int(np.argmin(sizes))
    chosen.append(candidates[bounds[w]:bounds[w + 1]])
  return np.concatenate(chosen)


def mask_tokens(input_ids: np.ndarray, special_mask: np.ndarray, rng: np.random.Generator,
                *, mask_id: int, vocab_size: int, rate: float = 0.15,
                word_starts: np.ndarray | None = None, mask_prob: float = 0.8,
                random_prob: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
  """Masks one sequence; see the module docstring.

  Args:
    input_ids: int [n] token ids.
    special_mask: bool [n], True for special tokens and padding (never masked).
    rng: the example's generator (`example_rng`).
    mask_id: the tokenizer's [MASK] id.
    vocab_size: random replacements are drawn uniformly from [0, vocab_size).
    rate: the share of maskable tokens to predict, in (0, 1).
    word_starts: bool [n], True where a word starts; given, whole words are masked.
    mask_prob, random_prob: shares of the picks replaced by [MASK] and by a random
      token; the rest stays unchanged.

  Returns:
    (masked ids int32 [n], labels int32 [n]: the original id where predicted, else
    IGNORE_INDEX).
  """
  _check(rate, mask_prob, random_prob)
  ids = np.asarray(input_ids)
  special = np.asarray(special_mask, bool)
  if ids.ndim != 1 or special.shape != ids.shape:
    raise ValueError(f'input_ids and special_mask must be 1-D of one length, got '
                     f'{ids.shape} and {special.shape}')
  if word_starts is not None and np.shape(word_starts) != ids.shape:
    raise ValueError(f'word_starts has shape {np.shape(word_starts)}, input_ids {ids.shape}')
  masked = ids.astype(np.int32)  # a copy
  labels = np.full(ids.shape, IGNORE_INDEX, np.int32)
  candidates = np.flatnonzero(~special)
  if not len(candidates):
    return masked, labels
  target = max(1, int(round(rate * len(candidates))))
  if word_starts is None:
    picked = rng.choice(candidates, target, replace=False)
  else:
    picked = _pick_words(candidates, np.asarray(word_starts, bool), target, rng)
  labels[picked] = ids[picked]
  # One draw per picked token decides [MASK] / random / unchanged (per token, as BERT).
  u = rng.random(len(picked))
  to_mask = picked[u < mask_prob]
  to_random = picked[(u >= mask_prob) & (u < mask_prob + random_prob)]
  masked[to_mask] = mask_id
  masked[to_random] = rng.integers(0, vocab_size, len(to_random))
  return masked, labels


def mask_batch(batch: dict, seed: int, epoch: int, *, mask_id: int, vocab_size: int,
               rate: float = 0.15, whole_word: bool = False) -> dict:
  """Masks every real row of a `BatchIterator` batch in place of its 'input_ids'.

  Rows are identified by the batch's 'index' (-1 = padding row: nothing predicted), so
  a row's masks depend on (seed, epoch, index) only, not on what else is in the batch.
  Reads 'special_tokens_mask' (optional) and 'word_starts' (whole words), which are
  removed; padding (attention_mask 0) is never masked. Adds 'labels' [b, T].
  """
  batch = dict(batch)
  special = batch.pop('special_tokens_mask', None)
  starts = batch.pop('word_starts', None)
  if whole_word and starts is None:
    raise ValueError("whole-word masking needs 'word_starts' in the features")
  ids = batch['input_ids']
  never = batch['attention_mask'] == 0
  if special is not None:
    never = never | (special > 0)
  masked = ids.copy()
  labels = np.full(ids.shape, IGNORE_INDEX, np.int32)
  for row, index in enumerate(batch['index']):
    if index < 0:
      continue
    masked[row], labels[row] = mask_tokens(
        ids[row], never[row], example_rng(seed, epoch, index), mask_id=mask_id,
        vocab_size=vocab_size, rate=rate,
        word_starts=starts[row] > 0 if whole_word else None)
  batch['input_ids'], batch['labels'] = masked, labels
  return batch


class MaskedBatches(Iterator[dict]):
  """A `BatchIterator` whose batches are masked anew each epoch (`mask_batch`).

  Length, epoch and `state_dict` / `load_state_dict` are the wrapped iterator's: the
  masks are a function of its position, so a resumed run draws the same ones.
  """

  def __init__(self, batches, *, mask_id: int, vocab_size: int, seed: int = 0,
               rate: float = 0.15, whole_word: bool = False):
    _check(rate, 0.8, 0.1)
    if mask_id is None:
      raise ValueError('the tokenizer has no [MASK] token; masked-LM needs one')
    self.batches = batches
    self._kw = dict(mask_id=mask_id, vocab_size=vocab_size, rate=rate,
                    whole_word=whole_word)
    self._seed = seed

  def __len__(self) -> int:
    return len(self.batches)

  @property
  def epoch(self) -> int:
    return self.batches.epoch

  def __next__(self) -> dict:
    batch = next(self.batches)
    # After next(), the wrapped iterator's epoch is the one this batch came from.
    return mask_batch(batch, self._seed, self.batches.epoch, **self._kw)

  def state_dict(self) -> dict:
    return self.batches.state_dict()

  def load_state_dict(self, state: dict) -> None:
    self.batches.load_state_dict(state)


def mask_features(features: list[dict], seed: int, *, mask_id: int, vocab_size: int,
                  rate: float = 0.15, whole_word: bool = False) -> list[dict]:
  """Fixed masks for a dev sample (epoch -1): features with masked ids and 'labels'."""
  out = []
  for index, feature in enumerate(features):
    feature = dict(feature)
    special = np.asarray(feature.pop('special_tokens_mask',
                                     np.zeros(len(feature['input_ids']), bool)), bool)
    starts = feature.pop('word_starts', None)
    if whole_word and starts is None:
      raise ValueError("whole-word masking needs 'word_starts' in the features")
    feature['input_ids'], feature['labels'] = mask_tokens(
        np.asarray(feature['input_ids']), special, example_rng(seed, -1, index),
        mask_id=mask_id, vocab_size=vocab_size, rate=rate,
        word_starts=np.asarray(starts, bool) if whole_word else None)
    out.append(feature)
  return out
