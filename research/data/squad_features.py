"""SQuAD: question + context windows in, answer text out.

A long context is cut into overlapping windows; each window is one feature:

  {'input_ids', 'token_type_ids': int32 [L],
   'offsets': int32 [L, 2]   character span of each token in the context,
                             (-1, -1) for question and special tokens,
   'example_index': int      position of the example in the input list,
   'example_id': str,
   'start_positions', 'end_positions': int   (training=True only; 0, 0 = the
                             CLS token when the answer is not in the window)}

`squad_postprocess` maps per-token start/end logits of all windows back to one
answer string per question, using the offsets.

`doc_stride` follows Hugging Face `run_qa`: it is the number of context tokens
that consecutive windows share (the overlap), not the step between windows.

Example:
  >>> enc = encode_squad(examples, tok, max_length=384, doc_stride=128)
  >>> answers = squad_postprocess(examples, enc.features, start, end)
  >>> answers['56be4db0acb8001400a502ec']
  'Denver Broncos'
"""

import logging
from typing import Any, Sequence

import numpy as np

from research.data.encoded import Encoded, check_fast


def _cut_questions(questions: list[str], tokenizer: Any,
                   max_query_length: int) -> tuple[list[str], int]:
  """Cuts questions longer than max_query_length tokens at a token boundary."""
  encoding = tokenizer(questions, add_special_tokens=False,
                       return_offsets_mapping=True)
  cut, num_cut = [], 0
  for question, offsets in zip(questions, encoding['offset_mapping']):
    if len(offsets) > max_query_length:
      question = question[:offsets[max_query_length - 1][1]]
      num_cut += 1
    cut.append(question)
  return cut, num_cut


def encode_squad(examples: Sequence[dict], tokenizer: Any,
                 max_length: int = 384, doc_stride: int = 128,
                 max_query_length: int = 64,
                 training: bool = False) -> Encoded:
  """Builds windowed features for SQuAD-style examples.

  Args:
    examples: dicts {'id', 'question', 'context', 'answers': {'text',
      'answer_start'}} (answers only needed when training).
    tokenizer: a fast tokenizer (offset mappings are needed).
    max_length: tokens per window, question and special tokens included.
    doc_stride: context tokens shared by consecutive windows.
    max_query_length: questions are cut to this many tokens.
    training: add 'start_positions'/'end_positions' from the first answer.

  Returns:
    `Encoded`; `num_truncated` counts the questions that were cut (a long
    context is never cut, it is windowed).

  Raises:
    ValueError: for a slow tokenizer or lengths that leave no room for the
      context.
  """
  check_fast(tokenizer)
  room = max_length - max_query_length - 3  # [CLS] q [SEP] c [SEP]
  if room < 1 or not 0 <= doc_stride < room:
    raise ValueError(
        f'max_length={max_length} leaves {room} context tokens after a '
        f'{max_query_length}-token question; doc_stride={doc_stride} must be '
        'in [0, that)')
  if not examples:
    return Encoded([], 0)
  questions = [ex['question'].lstrip() for ex in examples]
  questions, num_cut = _cut_questions(questions, tokenizer, max_query_length)
  encoding = tokenizer(
      questions, [ex['context'] for ex in examples], truncation='only_second',
      max_length=max_length, stride=doc_stride,
      return_overflowing_tokens=True, return_offsets_mapping=True,
      return_token_type_ids=True)
  features = []
  for f, example_index in enumerate(encoding['overflow_to_sample_mapping']):
    example = examples[example_index]
    # None (special token) becomes NaN, which is != 1.
    is_context = np.array(encoding.sequence_ids(f), np.float64) == 1
    offsets = np.array(encoding['offset_mapping'][f], np.int32).reshape(-1, 2)
    offsets[~is_context] = -1
    feature = {
        'input_ids': np.asarray(encoding['input_ids'][f], np.int32),
        'token_type_ids': np.asarray(encoding['token_type_ids'][f], np.int32),
        'offsets': offsets, 'example_index': int(example_index),
        'example_id': example['id']}
    if training:
      feature['start_positions'], feature['end_positions'] = _positions(
          example, offsets)
    features.append(feature)
  if num_cut:
    logging.info('squad: cut %d of %d questions to %d tokens', num_cut,
                 len(examples), max_query_length)
  return Encoded(features, num_cut)


def _positions(example: dict, offsets: np.ndarray) -> tuple[int, int]:
  """Token start/end of the first answer in this window, or (0, 0)."""
  answers = example['answers']
  if not answers['text']:
    return 0, 0
  start_char = int(answers['answer_start'][0])
  end_char = start_char + len(answers['text'][0])
  context = np.flatnonzero(offsets[:, 0] >= 0)
  if not len(context) or not (offsets[context[0], 0] <= start_char and
                              offsets[context[-1], 1] >= end_char):
    return 0, 0
  # First context token ending after start_char; last starting before end_char.
  start = context[np.argmax(offsets[context, 1] > start_char)]
  end = context[np.flatnonzero(offsets[context, 0] < end_char)[-1]]
  return int(start), int(end)


def squad_postprocess(examples: Sequence[dict], features: Sequence[dict],
                      start_logits: Sequence[np.ndarray],
                      end_logits: Sequence[np.ndarray], n_best: int = 20,
                      max_answer_len: int = 30) -> dict[str, str]:
  """Picks the best-scoring answer span of each example over its windows.

  A span (s, e) is valid when both tokens are context tokens, s <= e and
  e - s + 1 <= max_answer_len; its score is start_logits[s] + end_logits[e],
  searched over the n_best top starts and ends of each window.

  Args:
    examples: the examples given to `encode_squad`.
    features: its features (in the same order as the logits).
    start_logits: per feature, start logits [>= L] (padding is ignored).
    end_logits: per feature, end logits [>= L].
    n_best: candidates per window for start and for end.
    max_answer_len: longest answer in tokens.

  Returns:
    {example id: answer text}; '' for an example without a valid span.
  """
  if not len(start_logits) == len(end_logits) == len(features):
    raise ValueError(f'{len(features)} features but {len(start_logits)} start '
                     f'and {len(end_logits)} end logit rows')
  best = {}  # example_index -> (score, text)
  for f, feature in enumerate(features):
    offsets = feature['offsets']
    length = len(offsets)
    start = np.asarray(start_logits[f], np.float64)[:length]
    end = np.asarray(end_logits[f], np.float64)[:length]
    valid = offsets[:, 0] >= 0
    starts = [i for i in np.argsort(-start, kind='stable')[:n_best] if valid[i]]
    ends = [i for i in np.argsort(-end, kind='stable')[:n_best] if valid[i]]
    if not starts or not ends:
      continue
    s, e = np.asarray(starts)[:, None], np.asarray(ends)[None, :]
    scores = np.where((e >= s) & (e - s + 1 <= max_answer_len),
                      start[s] + end[e], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    if not np.isfinite(scores[i, j]):
      continue
    index = feature['example_index']
    if index not in best or scores[i, j] > best[index][0]:
      context = examples[index]['context']
      text = context[offsets[starts[i], 0]:offsets[ends[j], 1]]
      best[index] = (scores[i, j], text)
  return {ex['id']: best.get(i, (0.0, ''))[1] for i, ex in enumerate(examples)}
