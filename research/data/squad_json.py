"""Reader for SQuAD v1.1 JSON files (train-v1.1.json, dev-v1.1.json).

The file nests data -> paragraphs -> qas; each question becomes one example with
the same schema as TFDS 'squad/v1.1':

  {'id': str, 'title': str, 'question': str, 'context': str,
   'answers': {'text': [str, ...], 'answer_start': [int, ...]}}

Every answer is checked to occur in the context at its `answer_start`, so answer
positions can be trusted by the feature builder.

Example:
  >>> examples = list(read_squad('/data/squad/dev-v1.1.json'))
  >>> len(examples), examples[0]['answers']['text'][0]
  (10570, 'Denver Broncos')
"""

import json
import logging
from typing import Iterator

from research.data.errors import DataFormatError, PathLike


def read_squad(path: PathLike, strict: bool = True) -> Iterator[dict]:
  """Yields the questions of a SQuAD v1.1 JSON file in file order.

  Args:
    path: the JSON file.
    strict: if True, the first bad question raises; if False, bad questions
      (empty question, missing key, answer not at its `answer_start`) are
      skipped and counted in a logged warning.

  Yields:
    Example dicts {'id', 'title', 'question', 'context', 'answers'}.

  Raises:
    FileNotFoundError: if `path` does not exist.
    DataFormatError: for invalid JSON, a missing 'data' list, or a bad question
      (the message names the question id or its position).
  """
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise DataFormatError(path, f'invalid JSON: {e.msg}', e.lineno) from None
  if not isinstance(data, dict) or not isinstance(data.get('data'), list):
    raise DataFormatError(path, 'expected a JSON object with a "data" list '
                          '(SQuAD v1.1 layout)')
  skipped = 0
  for a, article in enumerate(data['data']):
    for p, paragraph in enumerate(article.get('paragraphs', [])):
      for q, qa in enumerate(paragraph.get('qas', [])):
        where = f'data[{a}].paragraphs[{p}].qas[{q}]'
        try:
          example = _example(article, paragraph, qa)
        except (KeyError, TypeError, ValueError) as e:
          if strict:
            qid = qa.get('id', '?') if isinstance(qa, dict) else '?'
            raise DataFormatError(
                path, f'{where} (id {qid}): {_describe(e)}') from None
          skipped += 1
          continue
        yield example
  if skipped:
    logging.warning('%s: skipped %d malformed questions', path, skipped)


def _example(article: dict, paragraph: dict, qa: dict) -> dict:
  context = paragraph['context']
  question = qa['question']
  if not question.strip():
    raise ValueError('empty question')
  if not context.strip():
    raise ValueError('empty context')
  texts, starts = [], []
  for answer in qa['answers']:
    text, start = answer['text'], int(answer['answer_start'])
    if context[start:start + len(text)] != text:
      raise ValueError(f'answer {text!r} is not at answer_start {start} of '
                       'the context')
    texts.append(text)
    starts.append(start)
  return {'id': str(qa['id']), 'title': article.get('title', ''),
          'question': question, 'context': context,
          'answers': {'text': texts, 'answer_start': starts}}


def _describe(error: Exception) -> str:
  if isinstance(error, KeyError):
    return f'missing key {error.args[0]!r}'
  return str(error)
