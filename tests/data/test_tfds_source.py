"""Tests of the TFDS source, offline, with `tfds.testing.mock_data`.

The 'data_source' reader needs no TensorFlow, so it is tested everywhere
tensorflow_datasets is installed; the 'tf' reader is tested only where
TensorFlow is installed too.
"""

import pathlib

import numpy as np
import pytest

from research.data import sources, squad_json, tasks, tfds_source

tfds = pytest.importorskip('tensorflow_datasets',
                           reason='tensorflow-datasets is not installed')

SQUAD_DEV = (pathlib.Path(__file__).resolve().parents[2].parent / 'shared' /
             'data' / 'squad' / 'dev-v1.1.json')


def records_source(records, seen_splits):
  """An `as_data_source_fn` serving fixed records and noting the split."""

  def as_data_source(builder, split=None, **kwargs):
    del builder, kwargs
    seen_splits.append(split)
    return records

  return as_data_source


@pytest.mark.parametrize('task', ['sst2', 'mrpc', 'stsb', 'mnli_mismatched'])
def test_glue_schema_from_random_mock(task):
  spec = tasks.get_task(task)
  with tfds.testing.mock_data(num_examples=3):
    examples = tfds_source.read_tfds(spec, 'validation', reader='data_source')
  assert len(examples) == 3
  keys = {'idx', 'text_a', 'label'} | ({'text_b'} if spec.is_pair else set())
  for example in examples:
    assert set(example) == keys
    assert isinstance(example['text_a'], str)
    assert isinstance(example['idx'], int)
    if spec.kind == 'regression':
      assert isinstance(example['label'], float)
    else:
      assert isinstance(example['label'], int)
      assert 0 <= example['label'] < spec.num_labels


def test_conll_records_and_split_name():
  records = [{'tokens': np.array(['EU', 'rejects']), 'ner': np.array([3, 0]),
              'pos': np.array([1, 2]), 'chunks': np.array([1, 2])},
             {'tokens': np.array([b'Peter']), 'ner': np.array([1]),
              'pos': np.array([1]), 'chunks': np.array([1])}]
  seen = []
  with tfds.testing.mock_data(as_data_source_fn=records_source(records, seen)):
    examples = tfds_source.read_tfds(tasks.get_task('conll2003'),
                                     'validation', reader='data_source')
  assert seen == ['dev']
  assert examples == [{'idx': 0, 'tokens': ['EU', 'rejects'], 'tags': [3, 0]},
                      {'idx': 1, 'tokens': ['Peter'], 'tags': [1]}]


def test_conll_length_mismatch_is_an_error():
  records = [{'tokens': np.array(['a', 'b']), 'ner': np.array([0])}]
  with tfds.testing.mock_data(as_data_source_fn=records_source(records, [])):
    with pytest.raises(ValueError, match='2 tokens but 1 NER tags'):
      tfds_source.read_tfds(tasks.get_task('conll2003'), 'train',
                            reader='data_source')


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason=f'no {SQUAD_DEV}')
def test_squad_matches_the_local_reader_schema():
  local = list(squad_json.read_squad(SQUAD_DEV))[:2]
  records = [{'id': ex['id'].encode(), 'title': ex['title'].encode(),
              'question': ex['question'], 'context': ex['context'].encode(),
              'answers': {
                  'text': np.array(ex['answers']['text']),
                  'answer_start': np.array(ex['answers']['answer_start'],
                                           np.int32)}}
             for ex in local]
  seen = []
  with tfds.testing.mock_data(as_data_source_fn=records_source(records, seen)):
    examples = tfds_source.read_tfds(tasks.get_task('squad'), 'validation',
                                     reader='data_source')
  assert seen == ['validation']
  assert examples == local


def test_load_examples_uses_tfds_without_data_dir():
  with tfds.testing.mock_data(num_examples=4):
    examples = sources.load_examples('rte', 'train')
  assert len(examples) == 4 and set(examples[0]) == {'idx', 'text_a',
                                                     'text_b', 'label'}


def test_unknown_reader():
  with pytest.raises(ValueError, match='reader must be one of'):
    tfds_source.read_tfds(tasks.get_task('sst2'), 'train', reader='torch')


def test_tf_reader():
  pytest.importorskip('tensorflow', reason='the tf reader needs TensorFlow')
  with tfds.testing.mock_data(num_examples=2):
    examples = tfds_source.read_tfds(tasks.get_task('qnli'), 'validation',
                                     reader='tf')
  assert len(examples) == 2 and isinstance(examples[0]['text_b'], str)
