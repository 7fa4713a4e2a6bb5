"""The text-corpus pipeline: normalisation, packing, NSP / SOP pairs, errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from research.data import corpus
from research.data.batching import BatchIterator
from tests.conftest import SHARED_DATA

SHAKESPEARE = SHARED_DATA / 'corpus' / 'tinyshakespeare'


def _positions(haystack: np.ndarray, needle: np.ndarray) -> list[int]:
  """Every position of `needle` in `haystack`."""
  n = len(needle)
  return [i for i in range(len(haystack) - n + 1) if np.array_equal(haystack[i:i + n], needle)]


def _in_order(doc: np.ndarray, first: np.ndarray, second: np.ndarray) -> bool:
  a, b = _positions(doc, first), _positions(doc, second)
  return bool(a and b and min(a) < max(b))


def _body(feature, segment=None):
  keep = np.asarray(feature['special_tokens_mask']) == 0
  if segment is not None:
    keep &= np.asarray(feature['token_type_ids']) == segment
  return np.asarray(feature['input_ids'])[keep]


def test_normalisation_and_document_splits(tmp_path):
  (tmp_path / 'a.txt').write_bytes(
      '\ufeffHeader\r\n*** START OF THE BOOK ***\r\nOne line.\r\nTwo line.\r\n\r\n'
      'Three.\r\r\rFour.\n*** END OF THE BOOK ***\nLicence text\n'.encode('utf-8'))
  (tmp_path / 'b.txt').write_text('Second file.\n')
  assert corpus.normalize('\ufeffa\r\nb\rc') == 'a\nb\nc'
  assert list(corpus.read_documents(tmp_path)) == [
      ['One line.', 'Two line.'], ['Three.'], ['Four.'], ['Second file.']]
  assert list(corpus.read_documents(tmp_path, 'file')) == [
      ['One line. Two line.', 'Three.', 'Four.'], ['Second file.']]
  assert len(list(corpus.read_documents(tmp_path, max_documents=2))) == 2
  with pytest.raises(ValueError, match='document split'):
    list(corpus.read_documents(tmp_path, 'lines'))
  with pytest.raises(FileNotFoundError):
    list(corpus.read_documents(tmp_path / 'missing'))


def test_packing_keeps_every_token_in_order_within_max_length(tok):
  docs = list(corpus.read_documents(SHAKESPEARE, max_documents=60))
  features = list(corpus.pack_sequences(iter(docs), tok, 32))
  assert all(len(f['input_ids']) <= 32 for f in features)
  assert all(len(f['input_ids']) == 32 for f in features[:-1])  # packed full
  for f in features:
    assert f['input_ids'][0] == tok.cls_token_id and f['input_ids'][-1] == tok.sep_token_id
  # The packed stream is the documents' tokens in order, joined by a [SEP] where a
  # document ends inside a sequence.
  stream = np.concatenate([np.asarray(f['input_ids'][1:-1]) for f in features])
  specials = np.concatenate([f['special_tokens_mask'][1:-1] for f in features]) > 0
  expected = [i for doc in docs for line in doc
              for i in tok(line, add_special_tokens=False)['input_ids']]
  assert stream[~specials].tolist() == expected
  assert (stream[specials] == tok.sep_token_id).all()
  assert len(docs) - 1 - len(features) <= specials.sum() <= len(docs) - 1


@pytest.mark.parametrize('task', ['nsp', 'sop'])
def test_pairs_have_balanced_labels_and_never_cross_documents(tok, task):
  docs = list(corpus.read_documents(SHAKESPEARE, max_documents=150))
  pairs = corpus.pair_features(iter(docs), tok, 48, task=task, seed=1)
  assert len(pairs) > 150
  labels = np.asarray([p['pair_labels'] for p in pairs])
  assert abs(labels.mean() - 0.5) < 0.1  # 50 % random / swapped (~200 pairs: std 3.5 %)
  doc_tokens = [np.concatenate([tok(s, add_special_tokens=False)['input_ids'] for s in d])
                for d in docs]
  for pair in pairs[:60]:
    assert len(pair['input_ids']) <= 48
    ids = np.asarray(pair['input_ids'])
    assert ids[0] == tok.cls_token_id and (ids == tok.sep_token_id).sum() == 2
    a, b = _body(pair, 0), _body(pair, 1)
    assert len(a) and len(b)
    if task == 'sop' or pair['pair_labels'] == 0:
      # The same document holds both, in the original order (A then B) unless swapped.
      first, second = (b, a) if task == 'sop' and pair['pair_labels'] == 1 else (a, b)
      assert any(_in_order(d, first, second) for d in doc_tokens)


def test_pair_features_batch_with_their_labels(tok):
  pairs = corpus.pair_features(corpus.read_documents(SHAKESPEARE, max_documents=30), tok, 32,
                               task='sop')
  batch = next(BatchIterator(pairs, 4, max_length=32))
  assert batch['pair_labels'].shape == (4,) and batch['token_type_ids'].shape[0] == 4
  assert set(batch) >= {'special_tokens_mask', 'word_starts'}


def test_clear_errors(tok):
  with pytest.raises(ValueError, match='empty'):
    list(corpus.pack_sequences(iter([[''], []]), tok, 32))
  with pytest.raises(ValueError, match='at least 2 documents'):
    corpus.pair_features(iter([['a b c d', 'e f g']]), tok, 32, task='nsp')
  with pytest.raises(ValueError, match='long enough'):
    corpus.pair_features(iter([['a'], ['b']]), tok, 32, task='sop')
  with pytest.raises(ValueError, match='pair task'):
    corpus.pair_features(iter([['a b']]), tok, 32, task='mlm')
  with pytest.raises(ValueError, match='embeds only'):
    corpus.check_vocab(tok, 1000)
  corpus.check_vocab(tok, len(tok))
  with pytest.raises(ValueError, match='dev_size'):
    corpus.split_dev([{}] * 3, 3, 0)


def test_task_documents_read_a_task_split():
  glue = SHARED_DATA / 'glue'
  if not (glue / 'SST-2' / 'train.tsv').exists():
    pytest.skip('no SST-2 data')
  docs = list(itertools.islice(corpus.task_documents('sst2', 'train', str(glue), 'local', 5), 10))
  assert len(docs) == 5 and all(len(d) == 1 and d[0].strip() for d in docs)


def test_tfds_text_documents_offline():
  tfds = pytest.importorskip('tensorflow_datasets')
  records = [{'text': 'First line.\r\nSecond line.'.encode()}, {'text': b'  '},
             {'text': b'Another document.'}]

  def as_data_source(builder, split=None, **kwargs):
    del builder, split, kwargs
    return records

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    docs = list(corpus.tfds_documents('lm1b', 'train'))
    assert docs == [['First line.', 'Second line.'], ['Another document.']]
    with pytest.raises(ValueError, match="no 'content' field"):
      list(corpus.tfds_documents('lm1b', 'train', field='content'))
