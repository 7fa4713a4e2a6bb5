"""Tests of load_examples: local folder layouts, source choice and errors."""

import pathlib

import pytest

from research.data import sources, tfds_source
from research.data.errors import MissingDataError

DATA = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
needs_data = pytest.mark.skipif(not DATA.is_dir(),
                                reason=f'offline data not found at {DATA}')


@needs_data
@pytest.mark.parametrize('data_dir', [DATA, DATA / 'glue',
                                      DATA / 'glue' / 'SST-2'])
def test_local_layouts(data_dir):
  examples = sources.load_examples('sst2', 'validation', data_dir=data_dir)
  assert len(examples) == 872 and examples[0]['label'] == 1


@needs_data
def test_local_non_glue_tasks():
  conll = sources.load_examples('conll2003', 'test', data_dir=DATA)
  assert len(conll) == 3453
  squad = sources.load_examples('squad', 'validation', data_dir=DATA,
                                source='local')
  assert len(squad) == 10570


def test_missing_file_lists_expected_files(tmp_path):
  (tmp_path / 'SST-2').mkdir()
  (tmp_path / 'SST-2' / 'train.tsv').write_text('sentence\tlabel\n')
  with pytest.raises(MissingDataError) as info:
    sources.load_examples('sst2', 'validation', data_dir=tmp_path)
  message = str(info.value)
  assert "no 'validation' file for task 'sst2'" in message
  assert str(tmp_path / 'SST-2' / 'dev.tsv') in message
  assert 'validation: dev.tsv' in message and 'train: train.tsv' in message


def test_data_dir_must_exist(tmp_path):
  with pytest.raises(MissingDataError, match='is not a directory'):
    sources.load_examples('rte', 'train', data_dir=tmp_path / 'nope')


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match='unknown task name'):
    sources.load_examples('glue_sst', 'train', data_dir=tmp_path)
  with pytest.raises(ValueError, match="no split 'dev'"):
    sources.load_examples('sst2', 'dev', data_dir=tmp_path)
  with pytest.raises(ValueError, match='source must be one of'):
    sources.load_examples('sst2', 'train', source='hub')


def test_no_data_message_when_local_has_no_dir():
  with pytest.raises(MissingDataError, match='no data: pass --data_dir '
                     'pointing to a GLUE folder or make TFDS reachable'):
    sources.load_examples('sst2', 'train', source='local')


def test_no_data_message_when_tfds_fails(monkeypatch):
  def unreachable(*args, **kwargs):
    raise ConnectionError('network is unreachable')

  monkeypatch.setattr(tfds_source, 'read_tfds', unreachable)
  with pytest.raises(MissingDataError) as info:
    sources.load_examples('sst2', 'validation')
  assert str(info.value).startswith('no data: pass --data_dir pointing to a '
                                    'GLUE folder or make TFDS reachable')
  assert 'ConnectionError: network is unreachable' in str(info.value)
  assert isinstance(info.value.__cause__, ConnectionError)


def test_default_data_dir_reads_one_root_for_tasks_and_corpora(tmp_path, monkeypatch):
  (tmp_path / 'glue' / 'SST-2').mkdir(parents=True)
  (tmp_path / 'corpus' / 'gutenberg').mkdir(parents=True)
  monkeypatch.setenv('RESEARCH_DATA_DIR', str(tmp_path))
  assert sources.default_data_dir('glue') == str(tmp_path / 'glue')
  assert sources.default_data_dir('corpus') == str(tmp_path / 'corpus')
  assert sources.default_data_dir('') == str(tmp_path)
  # A variable naming the GLUE folder itself (the older documented use) still works.
  monkeypatch.setenv('RESEARCH_DATA_DIR', str(tmp_path / 'glue'))
  assert sources.default_data_dir('glue') == str(tmp_path / 'glue')
