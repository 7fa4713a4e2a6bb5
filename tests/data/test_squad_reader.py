"""Tests of the SQuAD v1.1 JSON reader."""

import json
import pathlib

import pytest

from research.data import squad_json
from research.data.errors import DataFormatError

SQUAD_DEV = (pathlib.Path(__file__).resolve().parents[2].parent / 'shared' /
             'data' / 'squad' / 'dev-v1.1.json')


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason=f'no {SQUAD_DEV}')
def test_real_dev_set():
  examples = list(squad_json.read_squad(SQUAD_DEV))
  assert len(examples) == 10570
  assert len({ex['id'] for ex in examples}) == 10570
  first = examples[0]
  assert first['id'] == '56be4db0acb8001400a502ec'
  assert first['question'] == ('Which NFL team represented the AFC at Super '
                               'Bowl 50?')
  assert first['title'] == 'Super_Bowl_50'
  assert first['answers'] == {'text': ['Denver Broncos'] * 3,
                              'answer_start': [177] * 3}
  assert first['context'][177:191] == 'Denver Broncos'


def squad_file(tmp_path, qa, context='Paris is in France.'):
  data = {'version': '1.1', 'data': [{'title': 'T', 'paragraphs': [
      {'context': context, 'qas': [qa]}]}]}
  path = tmp_path / 'dev.json'
  path.write_text(json.dumps(data), encoding='utf-8')
  return path


GOOD_QA = {'id': 'q1', 'question': 'Where is Paris?',
           'answers': [{'text': 'France', 'answer_start': 12}]}


def test_good_file(tmp_path):
  (example,) = squad_json.read_squad(squad_file(tmp_path, GOOD_QA))
  assert example == {'id': 'q1', 'title': 'T', 'question': 'Where is Paris?',
                     'context': 'Paris is in France.',
                     'answers': {'text': ['France'], 'answer_start': [12]}}


def test_answer_not_at_its_start(tmp_path):
  qa = dict(GOOD_QA, answers=[{'text': 'France', 'answer_start': 3}])
  with pytest.raises(DataFormatError, match=r"id q1\): answer 'France' is not "
                     'at answer_start 3'):
    list(squad_json.read_squad(squad_file(tmp_path, qa)))


def test_empty_question_and_missing_key(tmp_path):
  with pytest.raises(DataFormatError, match='qas\\[0\\] \\(id q1\\): empty '
                     'question'):
    list(squad_json.read_squad(squad_file(tmp_path,
                                          dict(GOOD_QA, question=' '))))
  qa = {k: v for k, v in GOOD_QA.items() if k != 'answers'}
  with pytest.raises(DataFormatError, match="missing key 'answers'"):
    list(squad_json.read_squad(squad_file(tmp_path, qa)))
  qa = dict(GOOD_QA, question='')
  assert list(squad_json.read_squad(squad_file(tmp_path, qa),
                                    strict=False)) == []


def test_not_squad_json(tmp_path):
  path = tmp_path / 'x.json'
  path.write_text('{"data": [', encoding='utf-8')
  with pytest.raises(DataFormatError, match=r'x\.json:1: invalid JSON'):
    list(squad_json.read_squad(path))
  path.write_text('[1, 2]', encoding='utf-8')
  with pytest.raises(DataFormatError, match='"data" list'):
    list(squad_json.read_squad(path))
