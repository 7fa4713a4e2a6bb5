"""Turns examples into token features with a Hugging Face *fast* tokenizer.

A feature is a dict of numpy arrays and scalars, unpadded (padding happens per
batch in `research.data.batching`):

  classification / regression: {'input_ids', 'token_type_ids', 'labels', 'idx'}
  tagging:  {'input_ids', 'token_type_ids', 'labels' (per token, -100 = ignore),
             'idx'}
  span (SQuAD): see `research.data.squad_features` (re-exported here).

Truncation is longest-first to `max_length` tokens (special tokens included); the
number of truncated examples is returned and logged, so silent data loss shows.

Example:
  >>> tok = transformers.AutoTokenizer.from_pretrained(folder)
  >>> encoded = encode_classification(examples, tok, max_length=128)
  >>> encoded.num_truncated, encoded.features[0]['input_ids'][:3]
  (0, array([ 101, 2009, 1005], dtype=int32))
"""

import logging
from typing import Any, Sequence

import numpy as np

from research.data import tasks
from research.data.encoded import IGNORE_INDEX, Encoded, check_fast
from research.data.squad_features import encode_squad, squad_postprocess

__all__ = ['Encoded', 'IGNORE_INDEX', 'encode', 'encode_classification',
           'encode_squad', 'encode_tagging', 'squad_postprocess',
           'word_level_predictions']


def _check_max_length(max_length: int) -> None:
  if max_length < 4:
    raise ValueError(f'max_length must be >= 4, got {max_length}')


def _tokenize_truncating(tokenizer, max_length: int, first, second=None,
                         words: bool = False) -> tuple[list[tuple], int]:
  """Tokenizes with longest-first truncation.

  Tokenizing to max_length + 1 first tells which inputs are too long (those
  come out at exactly max_length + 1) without tokenizing huge texts fully;
  only those are tokenized again at max_length.

  Returns:
    (rows, num_truncated), one row (input_ids, token_type_ids, word_ids or
    None) per input.
  """
  kwargs = dict(truncation='longest_first', return_token_type_ids=True,
                is_split_into_words=words)

  def run(a, b, length, rows_out, positions):
    encoding = tokenizer(a, b, max_length=length, **kwargs)
    for j, i in enumerate(positions):
      rows_out[i] = (encoding['input_ids'][j], encoding['token_type_ids'][j],
                     encoding.word_ids(j) if words else None)

  rows = [None] * len(first)
  run(first, second, max_length + 1, rows, range(len(first)))
  truncated = [i for i, row in enumerate(rows) if len(row[0]) > max_length]
  if truncated:
    again_first = [first[i] for i in truncated]
    again_second = None if second is None else [second[i] for i in truncated]
    run(again_first, again_second, max_length, rows, truncated)
  return rows, len(truncated)


def _log_truncation(kind: str, num_truncated: int, total: int,
                    max_length: int) -> None:
  if num_truncated:
    logging.info('%s: truncated %d of %d examples to max_length=%d', kind,
                 num_truncated, total, max_length)


def encode_classification(examples: Sequence[dict], tokenizer: Any,
                          max_length: int = 128) -> Encoded:
  """Tokenizes single sentences or sentence pairs.

  Args:
    examples: dicts with 'text_a', optional 'text_b', 'label' and 'idx'.
    tokenizer: a fast tokenizer (BERT-style: [CLS] a [SEP] b [SEP]).
    max_length: maximum tokens per feature, special tokens included.

  Returns:
    `Encoded` with one feature per example: int32 'input_ids' and
    'token_type_ids' (0 for text_a, 1 for text_b), 'labels' (int or float)
    and 'idx'.
  """
  check_fast(tokenizer)
  _check_max_length(max_length)
  if not examples:
    return Encoded([], 0)
  pair = 'text_b' in examples[0]
  first = [ex['text_a'] for ex in examples]
  second = [ex['text_b'] for ex in examples] if pair else None
  rows, num_truncated = _tokenize_truncating(tokenizer, max_length, first,
                                             second)
  features = [{'input_ids': np.asarray(ids, np.int32),
               'token_type_ids': np.asarray(types, np.int32),
               'labels': ex['label'], 'idx': ex['idx']}
              for ex, (ids, types, _) in zip(examples, rows)]
  _log_truncation('classification', num_truncated, len(examples), max_length)
  return Encoded(features, num_truncated)


def encode_tagging(examples: Sequence[dict], tokenizer: Any,
                   max_length: int = 128) -> Encoded:
  """Tokenizes pre-split words and aligns word tags to sub-tokens.

  The tag of a word goes on its first sub-token; later sub-tokens and special
  tokens get IGNORE_INDEX (-100). Words cut off by truncation get no label.

  Args:
    examples: dicts with 'tokens' (words), 'tags' (int per word) and 'idx'.
    tokenizer: a fast tokenizer (needs `word_ids`).
    max_length: maximum tokens per feature, special tokens included.

  Returns:
    `Encoded` with features {'input_ids', 'token_type_ids', 'labels', 'idx'},
    where 'labels' is an int32 array as long as 'input_ids'.
  """
  check_fast(tokenizer)
  _check_max_length(max_length)
  if not examples:
    return Encoded([], 0)
  words = [list(ex['tokens']) for ex in examples]
  for ex in examples:
    if len(ex['tags']) != len(ex['tokens']):
      raise ValueError(f'example idx={ex["idx"]}: {len(ex["tokens"])} tokens '
                       f'but {len(ex["tags"])} tags')
  rows, num_truncated = _tokenize_truncating(tokenizer, max_length, words,
                                             words=True)
  features = []
  for ex, (ids, types, word_ids) in zip(examples, rows):
    labels = np.full(len(ids), IGNORE_INDEX, np.int32)
    previous = None
    for position, word in enumerate(word_ids):
      if word is not None and word != previous:
        labels[position] = ex['tags'][word]
      previous = word
    features.append({'input_ids': np.asarray(ids, np.int32),
                     'token_type_ids': np.asarray(types, np.int32),
                     'labels': labels, 'idx': ex['idx']})
  _log_truncation('tagging', num_truncated, len(examples), max_length)
  return Encoded(features, num_truncated)


def word_level_predictions(labels: Sequence[np.ndarray],
                           predictions: Sequence[np.ndarray]
                           ) -> tuple[list[list[int]], list[list[int]]]:
  """Keeps the positions that carry a word's label (first sub-tokens).

  Args:
    labels: per feature, the token 'labels' array (-100 = not a word start).
    predictions: per feature, predicted tag ids per token (same length or
      padded longer).

  Returns:
    (references, predictions): per feature, the gold and predicted tag ids of
    its words, ready for `metrics.entity_scores` after mapping to names.
  """
  refs, preds = [], []
  for label, prediction in zip(labels, predictions):
    label = np.asarray(label)
    keep = label != IGNORE_INDEX
    refs.append(label[keep].tolist())
    preds.append(np.asarray(prediction)[:len(label)][keep].tolist())
  return refs, preds


def encode(spec: tasks.TaskSpec, examples: Sequence[dict], tokenizer: Any,
           max_length: int = 128, doc_stride: int = 128,
           training: bool = False) -> Encoded:
  """Dispatches to the encoder of `spec.kind`.

  Args:
    spec: the task spec.
    examples: examples in the schema of `spec.kind`.
    tokenizer: a fast tokenizer.
    max_length: maximum tokens per feature.
    doc_stride: SQuAD only: overlapping tokens between windows.
    training: SQuAD only: add start/end positions.

  Returns:
    `Encoded` features.
  """
  if spec.kind == 'tagging':
    return encode_tagging(examples, tokenizer, max_length)
  if spec.kind == 'span':
    return encode_squad(examples, tokenizer, max_length, doc_stride,
                        training=training)
  return encode_classification(examples, tokenizer, max_length)
