"""research/runs/augmentation.py: augmented, teacher-labelled train data in the task's layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.runs import augmentation
from research.data import glue_tsv, tasks
from research.train import saved_runs, trainer


def test_augmented_folder_is_the_task_layout_and_trains_a_student(make_tiny_run, minilm_folder, tmp_path):
  teacher = make_tiny_run(1)
  data_dir = saved_runs.run_config(teacher).data_dir
  out = tmp_path / 'aug'
  summary = augmentation.augment('sst2', str(minilm_folder), f'{teacher}:best', str(out),
                       data_dir=data_dir, train_examples=4, per_example=3, top_k=5)
  spec = tasks.get_task('sst2')
  rows = list(glue_tsv.read_glue_tsv(out / 'SST-2' / 'train.tsv', spec))
  assert len(rows) == 4 + summary['augmented'] and summary['augmented'] > 0
  assert all(r['label'] in (0, 1) for r in rows)
  assert (out / 'SST-2' / 'dev.tsv').read_text() == (Path(data_dir) / 'SST-2' /
                                                     'dev.tsv').read_text()
  saved = json.loads((out / 'augment.json').read_text())
  assert saved['train_rows'] == len(rows) and sum(saved['teacher_label_counts'].values()) == (
      summary['augmented'])
  # The folder is a data_dir the trainer reads: a student distils from the teacher on it.
  config = saved_runs.run_config(teacher)
  config.data_dir, config.init_from = str(out), f'{teacher}:best'
  config.distill.teachers, config.distill.alpha = teacher, 1.0
  config.num_epochs, config.total_steps, config.train_examples = 1, 0, 0
  result = trainer.train_and_evaluate(config, tmp_path / 'student')
  b = config.batch_size
  assert result['steps'] in (len(rows) // b, -(-len(rows) // b))  # one epoch of these rows
  assert 0 <= result['final']['accuracy'] <= 100


def test_wrong_teacher_or_mlm_is_named(make_tiny_run, tmp_path):
  teacher = make_tiny_run(1)
  data_dir = saved_runs.run_config(teacher).data_dir
  with pytest.raises(ValueError, match='not a masked LM'):
    augmentation.augment('sst2', teacher, teacher, str(tmp_path / 'x'), data_dir=data_dir,
               train_examples=2, per_example=1)
  with pytest.raises(ValueError, match='no TSV layout'):
    augmentation.augment('conll2003', teacher, teacher, str(tmp_path / 'y'))
