"""Tests of SQuAD windows, answer positions and post-processing."""

import pathlib

import numpy as np
import pytest

from research.data import squad_json, tokenize
from research.evaluate import metrics

SQUAD_DEV = (pathlib.Path(__file__).resolve().parents[2].parent / 'shared' /
             'data' / 'squad' / 'dev-v1.1.json')


@pytest.fixture(scope='module')
def dev():
  if not SQUAD_DEV.is_file():
    pytest.skip(f'no {SQUAD_DEV}')
  return list(squad_json.read_squad(SQUAD_DEV))[:40]


def on_word_boundaries(example):
  """True if the first answer neither starts nor ends inside a word."""
  context = example['context']
  start = example['answers']['answer_start'][0]
  end = start + len(example['answers']['text'][0])
  inside = lambda i: 0 < i < len(context) and (
      context[i - 1].isalnum() and context[i].isalnum())
  return not inside(start) and not inside(end)


def oracle_logits(features, length):
  start = np.full((len(features), length), -5.0)
  end = np.full((len(features), length), -5.0)
  for i, feature in enumerate(features):
    start[i, feature['start_positions']] = 5.0
    end[i, feature['end_positions']] = 5.0
  return start, end


def test_window_positions_map_back_to_answer_text(tok, dev):
  features, _ = tokenize.encode_squad(dev, tok, max_length=128, doc_stride=32,
                                      training=True)
  assert len(features) > len(dev)  # Some contexts needed several windows.
  found, exact = set(), 0
  for feature in features:
    start, end = feature['start_positions'], feature['end_positions']
    assert len(feature['input_ids']) <= 128
    if start == 0:
      assert end == 0
      continue
    example = dev[feature['example_index']]
    first, last = feature['offsets'][start, 0], feature['offsets'][end, 1]
    span, answer = example['context'][first:last], example['answers']['text'][0]
    if on_word_boundaries(example):
      assert span == answer
      exact += 1
    else:  # E.g. 'gold' inside 'golden': the span is the whole token.
      assert answer in span
    found.add(feature['example_index'])
  assert found == set(range(len(dev)))  # Every answer is in some window.
  assert exact >= 35


def test_windows_overlap_by_doc_stride(tok, dev):
  features, _ = tokenize.encode_squad(dev[:10], tok, max_length=96,
                                      doc_stride=24)
  pairs = 0
  for a, b in zip(features, features[1:]):
    if a['example_index'] != b['example_index']:
      continue
    spans_a = [tuple(o) for o in a['offsets'] if o[0] >= 0]
    spans_b = [tuple(o) for o in b['offsets'] if o[0] >= 0]
    assert spans_a[-24:] == spans_b[:24]
    pairs += 1
  assert pairs > 0
  # Question and special tokens have no context offsets.
  first = features[0]
  question = np.flatnonzero(first['token_type_ids'] == 0)
  assert np.all(first['offsets'][question] == -1)
  assert first['example_id'] == dev[0]['id']


def test_answer_outside_window_points_at_cls(tok):
  context = 'filler words here . ' * 40 + 'The answer is Zanzibar .'
  example = {'id': 'z', 'question': 'What is the answer?', 'context': context,
             'answers': {'text': ['Zanzibar'],
                         'answer_start': [context.index('Zanzibar')]}}
  features, _ = tokenize.encode_squad([example], tok, max_length=64,
                                      doc_stride=16, max_query_length=16,
                                      training=True)
  positions = [(f['start_positions'], f['end_positions']) for f in features]
  assert positions[0] == (0, 0) and positions[-1] != (0, 0)
  last = features[-1]
  first = last['offsets'][last['start_positions'], 0]
  end = last['offsets'][last['end_positions'], 1]
  assert context[first:end] == 'Zanzibar'
  assert last['end_positions'] > last['start_positions']  # za ##nz ##ibar


def test_postprocess_with_oracle_logits(tok, dev):
  features, _ = tokenize.encode_squad(dev, tok, max_length=128, doc_stride=32,
                                      training=True)
  start, end = oracle_logits(features, 128)
  answers = tokenize.squad_postprocess(dev, features, start, end)
  assert set(answers) == {ex['id'] for ex in dev}
  aligned = [ex for ex in dev if on_word_boundaries(ex)]
  assert len(aligned) >= 35
  for example in aligned:
    assert answers[example['id']] == example['answers']['text'][0]
  scores = metrics.compute(('exact_match', 'squad_f1'), answers, aligned)
  assert scores == {'exact_match': 100.0, 'squad_f1': 100.0}


def test_postprocess_respects_span_rules():
  context = 'alpha beta gamma delta'
  offsets = np.array([[-1, -1], [0, 5], [6, 10], [11, 16], [17, 22],
                      [-1, -1]], np.int32)
  features = [{'offsets': offsets, 'example_index': 0, 'example_id': 'q'}]
  examples = [{'id': 'q', 'context': context}]
  # The best raw pair (start 4, end 1) has end < start: invalid. CLS logits
  # (position 0) are never used.
  start = np.array([[9.0, 3.0, 0.0, 0.0, 6.0, 0.0]])
  end = np.array([[9.0, 4.0, 0.0, 0.0, 0.0, 0.0]])
  assert tokenize.squad_postprocess(examples, features, start, end) == {
      'q': 'alpha'}
  # (1, 4) scores 7 but is 4 tokens long; (4, 4) scores 5.
  start = np.array([[0.0, 3.0, 0.0, 0.0, 1.0, 0.0]])
  end = np.array([[0.0, 0.0, 0.0, 0.0, 4.0, 0.0]])
  assert tokenize.squad_postprocess(examples, features, start, end,
                                    max_answer_len=4) == {
                                        'q': 'alpha beta gamma delta'}
  assert tokenize.squad_postprocess(examples, features, start, end,
                                    max_answer_len=3) == {'q': 'delta'}
  with pytest.raises(ValueError, match='1 features but 2 start'):
    tokenize.squad_postprocess(examples, features, np.zeros((2, 6)), end)


def test_long_question_is_cut_and_counted(tok):
  example = {'id': 'l', 'question': 'why ' * 100 + '?',
             'context': 'Because it is so .',
             'answers': {'text': ['Because'], 'answer_start': [0]}}
  features, num_truncated = tokenize.encode_squad(
      [example], tok, max_length=64, doc_stride=8, max_query_length=16,
      training=True)
  assert num_truncated == 1
  assert np.sum(features[0]['token_type_ids'] == 0) == 16 + 2  # CLS, SEP.
  assert features[0]['start_positions'] > 0


def test_bad_lengths_are_rejected(tok):
  with pytest.raises(ValueError, match='doc_stride=128 must be'):
    tokenize.encode_squad([], tok, max_length=128, doc_stride=128)
