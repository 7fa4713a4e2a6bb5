"""Tests of the CoNLL-2003 column-file reader."""

import pathlib

import pytest

from research.data import conll, tasks
from research.data.errors import DataFormatError

DATA = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
CONLL = DATA / 'conll2003'
SPEC = tasks.get_task('conll2003')


def read(path, **kwargs):
  return list(conll.read_conll(path, SPEC, **kwargs))


@pytest.mark.skipif(not CONLL.is_dir(), reason=f'no CoNLL copy at {CONLL}')
def test_real_validation_counts_and_first_sentences():
  sentences = read(CONLL / 'valid.txt')
  assert len(sentences) == 3250
  assert sum(len(s['tokens']) for s in sentences) == 51362
  assert [s['idx'] for s in sentences[:3]] == [0, 1, 2]
  first = sentences[0]
  assert first['tokens'][:3] == ['CRICKET', '-', 'LEICESTERSHIRE']
  assert first['tags'][:3] == [0, 0, SPEC.label_names.index('B-ORG')]
  # "West Indian" is B-MISC I-MISC, "Phil Simmons" B-PER I-PER.
  third = sentences[2]
  names = [SPEC.label_names[t] for t in third['tags']]
  assert third['tokens'][:5] == ['West', 'Indian', 'all-rounder', 'Phil',
                                 'Simmons']
  assert names[:5] == ['B-MISC', 'I-MISC', 'O', 'B-PER', 'I-PER']
  assert all(len(s['tokens']) == len(s['tags']) for s in sentences)


def write(tmp_path, text):
  path = tmp_path / 'valid.txt'
  path.write_text(text, encoding='utf-8')
  return path


GOOD = ('-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n'
        'Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n')


def test_docstart_and_blank_lines_separate_sentences(tmp_path):
  sentences = read(write(tmp_path, GOOD))
  assert sentences == [
      {'idx': 0, 'tokens': ['EU', 'rejects'], 'tags': [3, 0]},
      {'idx': 1, 'tokens': ['Peter', 'Blackburn'], 'tags': [1, 2]}]


def test_unknown_tag_names_line(tmp_path):
  path = write(tmp_path, GOOD + 'Paris NNP I-NP B-CITY\n')
  with pytest.raises(DataFormatError, match=r"valid\.txt:8: tag 'B-CITY' not "
                     r'in the label set'):
    read(path)


def test_wrong_column_count_names_line(tmp_path):
  with pytest.raises(DataFormatError, match=r'valid\.txt:4: expected 4 '
                     r'space-separated columns'):
    read(write(tmp_path, GOOD.replace('rejects VBZ B-VP O', 'rejects O')))
  with pytest.raises(DataFormatError, match=r':1: expected "token ... tag"'):
    read(write(tmp_path, 'lonely\n'))


def test_non_strict_skips_bad_sentences(tmp_path):
  path = write(tmp_path, GOOD.replace('rejects VBZ B-VP O',
                                      'rejects VBZ B-VP X-FOO'))
  sentences = read(path, strict=False)
  assert [s['tokens'] for s in sentences] == [['Peter', 'Blackburn']]


def test_requires_a_tagging_task(tmp_path):
  with pytest.raises(ValueError, match='not tagging'):
    list(conll.read_conll(write(tmp_path, GOOD), tasks.get_task('sst2')))
