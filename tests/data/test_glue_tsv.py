"""Tests of the GLUE TSV reader on the real files and on broken ones."""

import collections
import pathlib

import pytest

from research.data import glue_tsv, tasks
from research.data.errors import DataFormatError

DATA = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
GLUE = DATA / 'glue'
needs_glue = pytest.mark.skipif(
    not GLUE.is_dir(), reason=f'offline GLUE copy not found at {GLUE}')


def read(task, path, **kwargs):
  return list(glue_tsv.read_glue_tsv(path, tasks.get_task(task), **kwargs))


@needs_glue
def test_sst2_dev_and_train():
  dev = read('sst2', GLUE / 'SST-2' / 'dev.tsv')
  assert len(dev) == 872
  assert collections.Counter(ex['label'] for ex in dev) == {1: 444, 0: 428}
  assert dev[0] == {'idx': 0, 'label': 1, 'text_a':
                    "it 's a charming and often affecting journey . "}
  train = read('sst2', GLUE / 'SST-2' / 'train.tsv')
  assert len(train) == 67349
  assert sum(ex['label'] for ex in train) == 37569
  assert [ex['idx'] for ex in train[:3]] == [0, 1, 2]


@needs_glue
def test_mrpc_dev_bom_header_and_stray_quotes():
  dev = read('mrpc', GLUE / 'MRPC' / 'dev.tsv')
  assert len(dev) == 408
  assert sum(ex['label'] for ex in dev) == 279
  # QUOTE_NONE keeps the unbalanced quote that opens the second sentence.
  assert dev[0]['text_b'].startswith('"The foodservice pie business')
  assert dev[0]['text_a'].startswith('He said the foodservice')


@needs_glue
def test_stsb_dev_scores():
  dev = read('stsb', GLUE / 'STS-B' / 'dev.tsv')
  assert len(dev) == 1500
  assert dev[0]['text_a'] == 'A man with a hard hat is dancing.'
  assert dev[0]['text_b'] == 'A man wearing a hard hat is dancing.'
  assert dev[1]['label'] == 4.75 and isinstance(dev[1]['label'], float)
  assert all(0.0 <= ex['label'] <= 5.0 for ex in dev)


@needs_glue
def test_qnli_dev_labels():
  dev = read('qnli', GLUE / 'QNLI' / 'dev.tsv')
  assert len(dev) == 5463
  assert collections.Counter(ex['label'] for ex in dev) == {0: 2702, 1: 2761}


@needs_glue
def test_unlabelled_test_files():
  sst2 = read('sst2', GLUE / 'SST-2' / 'test.tsv', labelled=False)
  assert len(sst2) == 1821 and {ex['label'] for ex in sst2} == {-1}
  assert sst2[0]['text_a'] == 'uneasy mishmash of styles and genres .'
  stsb = read('stsb', GLUE / 'STS-B' / 'test.tsv', labelled=False)
  assert len(stsb) == 1379 and stsb[0]['label'] == -1.0


def write(tmp_path, text, name='dev.tsv'):
  path = tmp_path / name
  path.write_text(text, encoding='utf-8')
  return path


def test_malformed_row_names_file_and_line(tmp_path):
  path = write(tmp_path, 'sentence\tlabel\ngood film\t1\nbad\t0\textra\n')
  with pytest.raises(DataFormatError, match=r'dev\.tsv:3: expected 2 '
                     r'tab-separated columns, got 3'):
    read('sst2', path)


def test_label_outside_label_set(tmp_path):
  path = write(tmp_path, 'sentence\tlabel\ngood film\t1\nmeh\t2\n')
  with pytest.raises(DataFormatError, match=r"dev\.tsv:3: label '2' not in "
                     r"the label set \['0', '1'\]"):
    read('sst2', path)


def test_empty_text(tmp_path):
  path = write(tmp_path, 'index\tquestion\tsentence\tlabel\n'
               '0\tWhy?\t  \tentailment\n')
  with pytest.raises(DataFormatError, match=r'dev\.tsv:2: empty text'):
    read('qnli', path)


def test_regression_label_must_be_a_number(tmp_path):
  header = '\t'.join(['c%d' % i for i in range(10)])
  row = '\t'.join(['0'] * 7 + ['a', 'b', 'high'])
  path = write(tmp_path, f'{header}\n{row}\n')
  with pytest.raises(DataFormatError, match="label 'high' is not a number"):
    read('stsb', path)


def test_cola_has_no_header(tmp_path):
  path = write(tmp_path, 'gj04\t1\t\tThe book fell.\n'
               'gj04\t0\t*\tFell book the.\n')
  examples = read('cola', path)
  assert [ex['label'] for ex in examples] == [1, 0]
  assert examples[1]['text_a'] == 'Fell book the.'
  with pytest.raises(DataFormatError, match=r':1: expected 4'):
    read('cola', write(tmp_path, 'The book fell.\t1\n', 'bad.tsv'))


def test_mnli_label_is_last_column(tmp_path):
  header = '\t'.join(['h%d' % i for i in range(16)])
  row = ['0'] * 8 + ['A man sleeps.', 'Nobody sleeps.'] + ['x'] * 5 + [
      'contradiction']
  path = write(tmp_path, header + '\n' + '\t'.join(row) + '\n',
               'dev_matched.tsv')
  (example,) = read('mnli', path)
  assert example == {'idx': 0, 'text_a': 'A man sleeps.',
                     'text_b': 'Nobody sleeps.', 'label': 2}


def test_non_strict_skips_bad_rows(tmp_path):
  path = write(tmp_path, 'sentence\tlabel\na\t1\nb\t7\nc\nd\t0\n')
  examples = read('sst2', path, strict=False)
  assert [(ex['idx'], ex['text_a']) for ex in examples] == [(0, 'a'), (1, 'd')]


def test_missing_file_and_non_tsv_task(tmp_path):
  with pytest.raises(FileNotFoundError):
    read('sst2', tmp_path / 'nope.tsv')
  with pytest.raises(ValueError, match='not a GLUE TSV task'):
    read('squad', write(tmp_path, 'x\n'))
