"""Tests of research.data.tasks: the registry covers every task consistently."""

import dataclasses

import pytest

from research.data import tasks
from research.evaluate import metrics


def test_registry_covers_glue_conll_and_squad():
  for name in tasks.GLUE_TASKS + ('mnli_matched', 'mnli_mismatched',
                                  'conll2003', 'squad'):
    assert tasks.get_task(name).name == name
  assert tasks.get_task('conll2003').label_names == (
      'O', 'B-PER', 'I-PER', 'B-ORG', 'I-ORG', 'B-LOC', 'I-LOC', 'B-MISC',
      'I-MISC')


def test_unknown_task_lists_known_names():
  with pytest.raises(ValueError, match='unknown task name') as info:
    tasks.get_task('sst3')
  assert 'sst2' in str(info.value) and 'squad' in str(info.value)


def test_lookup_is_case_and_dash_insensitive():
  assert tasks.get_task('SST-2') is tasks.TASKS['sst2']
  assert tasks.get_task('STS-B').kind == 'regression'


def test_specs_are_frozen_and_hashable():
  spec = tasks.get_task('sst2')
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.name = 'x'
  assert len({spec, tasks.get_task('mrpc')}) == 2


@pytest.mark.parametrize('spec', list(tasks.TASKS.values()), ids=str)
def test_every_spec_is_consistent(spec):
  assert set(spec.metrics) <= set(metrics.METRICS)
  assert spec.main_metric in spec.metrics
  assert spec.tfds_name
  assert 'train' in spec.splits and 'validation' in spec.splits
  if spec.kind == 'classification':
    assert len(spec.tsv_labels) == len(spec.label_names) == spec.num_labels
    assert spec.columns is not None and spec.test_columns is not None
    assert spec.columns.text_b is None or spec.is_pair
  if spec.kind == 'regression':
    assert spec.num_labels == 1 and spec.columns.label is not None


def test_mnli_dev_files_and_tfds_splits():
  mnli = tasks.get_task('mnli')
  assert mnli.file_name('validation_matched') == 'dev_matched.tsv'
  assert mnli.file_name('validation_mismatched') == 'dev_mismatched.tsv'
  mismatched = tasks.get_task('mnli_mismatched')
  assert mismatched.file_name('validation') == 'dev_mismatched.tsv'
  assert mismatched.tfds_split('validation') == 'validation_mismatched'
  assert mismatched.tfds_split('test') == 'test_mismatched'
  assert mnli.label_names == ('entailment', 'neutral', 'contradiction')


def test_glue_layouts_and_names():
  assert tasks.get_task('sst2').folder == 'SST-2'
  assert tasks.get_task('sst2').tfds_name == 'glue/sst2'
  stsb = tasks.get_task('stsb').columns
  assert (stsb.text_a, stsb.text_b, stsb.label) == (7, 8, 9)
  cola = tasks.get_task('cola').columns
  assert not cola.header and cola.num_columns == 4
  assert tasks.get_task('conll2003').tfds_split('validation') == 'dev'
  assert tasks.get_task('squad').tfds_name == 'squad/v1.1'
  assert tasks.get_task('cola').main_metric == 'matthews_corr'
  assert tasks.get_task('mrpc').main_metric == 'f1'


def test_unknown_split_lists_known_splits():
  with pytest.raises(ValueError, match="no split 'dev'.*validation"):
    tasks.get_task('sst2').file_name('dev')


def test_invalid_spec_is_rejected():
  base = tasks.get_task('sst2')
  with pytest.raises(ValueError, match='kind'):
    dataclasses.replace(base, kind='ranking')
  with pytest.raises(ValueError, match='main_metric'):
    dataclasses.replace(base, main_metric='f1')
