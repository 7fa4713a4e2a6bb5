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


def _records_of(spec, examples):
  """TFDS records (feature names of the real builders) holding the local examples."""
  if spec.kind == 'tagging':
    return [{'tokens': np.array(e['tokens']), 'ner': np.array(e['tags'], np.int64),
             'pos': np.zeros(len(e['tags']), np.int64),
             'chunks': np.zeros(len(e['tags']), np.int64)} for e in examples]
  if spec.kind == 'span':
    return [{'id': e['id'], 'title': e['title'], 'question': e['question'],
             'context': e['context'],
             'answers': {'text': np.array(e['answers']['text']),
                         'answer_start': np.array(e['answers']['answer_start'], np.int32)}}
            for e in examples]
  records = []
  for e in examples:
    record = {'idx': e['idx'], spec.text_fields[0]: e['text_a'],
              'label': np.float32(e['label']) if spec.kind == 'regression' else e['label']}
    if spec.is_pair:
      record[spec.text_fields[1]] = e['text_b']
    records.append(record)
  return records


@pytest.mark.parametrize('task', ['sst2', 'mrpc', 'stsb', 'conll2003', 'squad'])
def test_tfds_load_path_gives_the_local_readers_examples(task, tmp_path):
  """`tfds.load` (the 'tf' reader, TensorFlow installed) for each task kind: the same
  examples as the local reader of the original files."""
  tf = pytest.importorskip('tensorflow', reason='tfds.load needs TensorFlow')
  from research.testing import write_synthetic_data, write_synthetic_pairs  # pylint: disable=g-import-not-at-top
  data = write_synthetic_data(tmp_path, sst2=12, conll=8, squad=8)
  write_synthetic_pairs(tmp_path, rows=6)
  spec = tasks.get_task(task)
  local = sources.load_examples(task, 'validation', data['glue'] if spec.columns
                                else data['root'])
  records = _records_of(spec, local)
  seen = []

  def as_dataset(builder, split=None, **kwargs):
    del builder, kwargs
    seen.append(split)
    return tf.data.Dataset.from_generator(lambda: iter(records), output_signature=(
        tf.nest.map_structure(lambda v: tf.TensorSpec(
            [None] * np.ndim(v), tf.as_dtype(np.asarray(v).dtype if not isinstance(v, str)
                                             else tf.string)), records[0])))

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    got = tfds_source.read_tfds(spec, 'validation', reader='tf')
  assert seen == [spec.tfds_split('validation')]
  if spec.kind == 'regression':  # TFDS stores STS-B scores as float32
    assert [g['label'] for g in got] == pytest.approx([e['label'] for e in local], rel=1e-6)
    got = [{**g, 'label': e['label']} for g, e in zip(got, local)]
  assert got == local, (got[:1], local[:1])


def test_tfds_errors_name_the_true_cause(monkeypatch):
  """No TensorFlow -> the extra to install; no network -> the folder or flag to use."""
  def fails(error):
    def read(*args, **kwargs):
      raise error
    return read

  monkeypatch.setattr(tfds_source, 'read_tfds', fails(ModuleNotFoundError(
      "No module named 'importlib_resources'", name='importlib_resources')))
  monkeypatch.setattr(tfds_source, 'has_tensorflow', lambda: False)
  with pytest.raises(sources.MissingDataError, match=r"needs TensorFlow.*\.\[tfds\]"):
    sources.load_examples('sst2', 'validation')
  monkeypatch.setattr(tfds_source, 'has_tensorflow', lambda: True)
  with pytest.raises(sources.MissingDataError, match=r"importlib_resources.*\.\[tfds\]"):
    sources.load_examples('sst2', 'validation')
  monkeypatch.setattr(tfds_source, 'read_tfds', fails(ConnectionError(
      "HTTPSConnectionPool(host='dl.fbaipublicfiles.com'): Failed to resolve")))
  with pytest.raises(sources.MissingDataError) as info:
    sources.load_examples('conll2003', 'validation')
  message = str(info.value)
  assert "could not download 'conll2003' (no network?)" in message
  assert '--config.data_source=tfds --config.data_dir=DIR' in message
  assert 'conll2003/...' in message and '--config.data_dir=FOLDER' in message
