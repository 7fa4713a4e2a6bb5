"""Tests of sentence, pair and NER tokenisation with the bundled BERT tokenizer."""

import pathlib

import numpy as np
import pytest

from research.data import conll, glue_tsv, tasks, tokenize
from research.evaluate import metrics

DATA = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f'no data at {DATA}')


@pytest.fixture(scope='module')
def mrpc():
  path = DATA / 'glue' / 'MRPC' / 'dev.tsv'
  if not path.is_file():
    pytest.skip(f'no {path}')
  return list(glue_tsv.read_glue_tsv(path, tasks.get_task('mrpc')))[:40]


def test_pair_token_types(tok, mrpc):
  features, num_truncated = tokenize.encode_classification(mrpc[:5], tok, 128)
  assert num_truncated == 0
  for example, feature in zip(mrpc[:5], features):
    ids, types = feature['input_ids'], feature['token_type_ids']
    assert ids.dtype == np.int32 and len(ids) == len(types)
    sep = np.flatnonzero(ids == tok.sep_token_id)
    assert ids[0] == tok.cls_token_id
    assert len(sep) == 2 and sep[1] == len(ids) - 1
    assert np.all(types[:sep[0] + 1] == 0) and np.all(types[sep[0] + 1:] == 1)
    assert tok.decode(ids[1:sep[0]]) == tok.decode(tok(example['text_a'])[
        'input_ids'][1:-1])
    assert feature['labels'] == example['label']
    assert feature['idx'] == example['idx']


def test_single_sentence(tok):
  examples = [{'idx': 7, 'text_a': 'A charming film .', 'label': 1}]
  (feature,), _ = tokenize.encode_classification(examples, tok, 16)
  assert tok.convert_ids_to_tokens(feature['input_ids'].tolist()) == [
      '[CLS]', 'a', 'charming', 'film', '.', '[SEP]']
  assert not feature['token_type_ids'].any()


def test_truncation_count_and_longest_first(tok, mrpc):
  max_length = 48
  full = tok([ex['text_a'] for ex in mrpc], [ex['text_b'] for ex in mrpc])
  expected = sum(len(ids) > max_length for ids in full['input_ids'])
  assert 0 < expected < len(mrpc)
  features, num_truncated = tokenize.encode_classification(mrpc, tok,
                                                           max_length)
  assert num_truncated == expected
  reference = tok([ex['text_a'] for ex in mrpc], [ex['text_b'] for ex in mrpc],
                  truncation='longest_first', max_length=max_length)
  for feature, ids, untruncated in zip(features, reference['input_ids'],
                                       full['input_ids']):
    assert feature['input_ids'].tolist() == ids
    assert len(ids) == min(len(untruncated), max_length)


@pytest.fixture(scope='module')
def conll_valid():
  path = DATA / 'conll2003' / 'valid.txt'
  if not path.is_file():
    pytest.skip(f'no {path}')
  return list(conll.read_conll(path, tasks.get_task('conll2003')))[:60]


def test_ner_labels_on_first_sub_token(tok, conll_valid):
  features, num_truncated = tokenize.encode_tagging(conll_valid, tok, 128)
  assert num_truncated == 0
  split_words = 0
  for example, feature in zip(conll_valid, features):
    labels = feature['labels']
    assert labels[0] == labels[-1] == tokenize.IGNORE_INDEX
    position = 1
    for word, tag in zip(example['tokens'], example['tags']):
      pieces = tok.tokenize(word)
      assert labels[position] == tag
      assert np.all(labels[position + 1:position + len(pieces)] == -100)
      split_words += len(pieces) > 1
      position += len(pieces)
    assert position == len(labels) - 1
  assert split_words > 20  # The check above really covered sub-tokens.


def test_ner_truncation_and_word_level_round_trip(tok, conll_valid):
  features, num_truncated = tokenize.encode_tagging(conll_valid, tok, 12)
  lengths = [len(tok(ex['tokens'], is_split_into_words=True)['input_ids'])
             for ex in conll_valid]
  assert num_truncated == sum(n > 12 for n in lengths) > 0
  assert max(len(f['input_ids']) for f in features) == 12
  labels = [f['labels'] for f in features]
  # A perfect tagger, scored at word level, gets 100 entity F1.
  refs, preds = tokenize.word_level_predictions(labels, [
      np.where(l < 0, 0, l) for l in labels])
  assert refs == preds
  # Words whose first sub-token fits before [SEP] (positions 1..10) keep
  # their tag; the rest are cut off.
  for example, ref in zip(conll_valid, refs):
    starts = np.cumsum([0] + [len(tok.tokenize(w)) for w in example['tokens']])
    fits = [tag for tag, start in zip(example['tags'], starts) if start < 10]
    assert ref == fits
  scores = metrics.compute(tasks.get_task('conll2003'), preds, refs)
  assert scores['entity_f1'] == 100.0


def test_encode_dispatch_and_slow_tokenizer_rejected(tok):
  spec = tasks.get_task('conll2003')
  encoded = tokenize.encode(spec, [{'idx': 0, 'tokens': ['Paris'],
                                    'tags': [5]}], tok, 8)
  assert encoded.features[0]['labels'].tolist() == [-100, 5, -100]

  class Slow:
    is_fast = False

  with pytest.raises(ValueError, match='fast tokenizer'):
    tokenize.encode_classification([{'idx': 0, 'text_a': 'x', 'label': 0}],
                                   Slow())
  with pytest.raises(ValueError, match='2 tokens but 1 tags'):
    tokenize.encode_tagging([{'idx': 0, 'tokens': ['a', 'b'], 'tags': [0]}],
                            tok)
