"""research/runs/fastformers.py (the FastFormers-style pipeline) end to end on a tiny run."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import fastformers as configs
from research.runs import fastformers, measure, run_data, transform
from research.train import saved_runs
from research.transforms import narrow, student_init


def test_pipeline_runs_every_stage_and_reports(make_tiny_run, tmp_path):
  teacher = make_tiny_run(2)
  pipeline = configs.get_config('runlocal')
  report = fastformers.compress(pipeline, f'{teacher}:best', str(tmp_path / 'out'))
  stages = {k: str(tmp_path / 'out' / 'L1' / k)
            for k in ('distilled', 'pruned', 'recovered', 'int8')}
  distilled = saved_runs.load_run(stages['distilled'])
  assert distilled.model.encoder.num_layers == 1          # layers=1 of the teacher's 2
  pruned = saved_runs.load_run(stages['pruned'])
  assert pruned.model.encoder.heads(0) < 4                # heads removed for real
  int8 = saved_runs.load_run(stages['int8'])
  assert {kind for _, kind in int8.model.encoder.projections} == {'int8'}
  rows = {r['model']: r for r in report['rows']}
  assert set(rows) == {'teacher', 'L1 distilled', 'L1 pruned', 'L1 recovered', 'L1 int8',
                       'teacher, static length'}
  for name in ('teacher', 'L1 distilled', 'L1 int8'):
    assert 0.0 <= rows[name]['accuracy'] <= 100.0
    assert rows[name]['seq_s_b32'] > 0 and rows[name]['bytes_on_disk'] > 0
  assert rows['L1 pruned']['params'] < rows['L1 distilled']['params'] < rows['teacher']['params']
  assert rows['teacher, static length']['speedup_b1'] == 1.0
  assert set(report['stages']['L1']) == {'dynamic length', 'distillation', 'pruning', 'int8'}
  assert os.path.isfile(tmp_path / 'out' / 'pareto.png')
  saved = json.loads((tmp_path / 'out' / 'pipeline.json').read_text())
  assert saved['metric'] == 'accuracy' and len(saved['rows']) == len(report['rows'])
  # A rerun skips every finished stage (no stage folder is written again).
  before = os.path.getmtime(os.path.join(stages['int8'], 'model.json'))
  fastformers.run_stages(pipeline, f'{teacher}:best', str(tmp_path / 'out'))
  assert os.path.getmtime(os.path.join(stages['int8'], 'model.json')) == before


def test_bad_pipeline_input_is_named(make_tiny_run, tmp_path):
  with pytest.raises(ValueError, match='unknown name .depth.'):
    fastformers.parse_student('layers=1 depth=3')
  with pytest.raises(ValueError, match='names no teacher layers'):
    fastformers.parse_student('heads=2')
  with pytest.raises(ValueError, match='unknown arguments'):
    configs.get_config('fast')
  teacher = make_tiny_run(2)
  int8 = str(tmp_path / 'int8')
  transform.transform_run(f'{teacher}:best', int8, 'ptq', calibration_examples=8)
  with pytest.raises(ValueError, match='already compressed'):
    fastformers.run_stages(configs.get_config('runlocal'), f'{int8}:best',
                        str(tmp_path / 'out'))


def test_compare_runs_scores_and_times_each_run(make_tiny_run, tmp_path):
  teacher = make_tiny_run(2)
  int8 = str(tmp_path / 'int8')
  transform.transform_run(f'{teacher}:best', int8, 'ptq', calibration_examples=8)
  report = measure.compare(
      f'{teacher}:best', measure.parse_runs(f'int8={int8}'), str(tmp_path / 'cmp'),
      sentences=8, batch_sizes=(4,), rounds=1, torch=False, eval_examples=16)
  rows = {r['model']: r for r in report['rows']}
  assert set(rows) == {'teacher', 'int8', 'teacher, static length'}
  assert rows['int8']['bytes_on_disk'] < rows['teacher']['bytes_on_disk']
  assert rows['int8']['seq_s_b4'] > 0 and 0 <= rows['int8']['accuracy'] <= 100
  assert (tmp_path / 'cmp' / 'compare.png').read_bytes()[:4] == b'\x89PNG'
  with pytest.raises(ValueError, match='given twice'):
    measure.parse_runs('a=x,a=y')
  with pytest.raises(ValueError, match='name=folder'):
    measure.parse_runs('runs/x')


def test_narrowing_ranks_by_importance_unless_leading_is_named(make_tiny_run, tmp_path):
  teacher = make_tiny_run(2)
  ranked = transform.transform_run(f'{teacher}:best', str(tmp_path / 'ranked'),
                                   'truncate_width', num_heads=2, hidden_size=16,
                                   importance_examples=16)
  assert ranked['sites'] == {'num_heads': 2, 'intermediate_size': None, 'hidden_size': 16,
                             'order': 'importance', 'importance_examples': 16}
  data = run_data.load(f'{teacher}:best')
  _, sample = data.split(data.config.train_split, 16, training=True)
  config, want = narrow.ranked_width(data.run.model, data.run.params, data.batches(sample),
                                     num_heads=2, hidden_size=16)
  got = saved_runs.load_run(ranked['out'])
  assert got.model.encoder == config
  jax.tree.map(np.testing.assert_allclose, got.params, want)
  leading = transform.transform_run(f'{teacher}:best', str(tmp_path / 'leading'),
                                    'truncate_width', num_heads=2, hidden_size=16,
                                    order='leading')
  config, want = student_init.truncate_width(data.run.model.encoder, data.run.params,
                                             num_heads=2, hidden_size=16)
  got = saved_runs.load_run(leading['out'])
  assert got.model.encoder == config and leading['sites']['order'] == 'leading'
  jax.tree.map(np.testing.assert_allclose, got.params, want)
  with pytest.raises(ValueError, match=r"order must be one of \['importance', 'leading'\]"):
    transform.transform_run(f'{teacher}:best', str(tmp_path / 'x'), 'truncate_width',
                            num_heads=2, order='random')
  # FastFormers students: importance by default, `order=leading` named in the folder.
  pipeline = configs.get_config('runlocal')
  pipeline.students = 'layers=1 heads=2;layers=1 heads=2 order=leading;layers=0,1'
  assert list(fastformers.students(pipeline)) == ['L1_h2', 'L1_h2_leading', 'L2']
  with pytest.raises(ValueError, match='order must be one of'):
    fastformers.parse_student('layers=1 heads=2 order=best')
  with pytest.raises(ValueError, match='needs heads=, ffn= or hidden='):
    fastformers.parse_student('layers=1 order=leading')


def test_student_stages_train_on_the_pipelines_data_dir(make_tiny_run, tmp_path):
  teacher = make_tiny_run(1)
  teacher_config = saved_runs.load_run(teacher).config
  pipeline = configs.get_config('runlocal')
  kept = fastformers.train_config(teacher_config, pipeline, teacher, f'{teacher}:best', 4)
  assert kept.data_dir == teacher_config.data_dir     # '' = the teacher's data
  pipeline.data_dir = str(tmp_path / 'augmented')       # e.g. experiments.augment's folder
  moved = fastformers.train_config(teacher_config, pipeline, teacher, f'{teacher}:best', 4)
  assert moved.data_dir == pipeline.data_dir and moved.distill.teachers == teacher


def test_pipeline_without_pruning_goes_from_distilled_to_int8(make_tiny_run, tmp_path):
  teacher = make_tiny_run(2)
  pipeline = configs.get_config('runlocal')
  pipeline.prune.heads_fraction = pipeline.prune.ffn_fraction = 0.0
  pipeline.speed.batch_sizes = '4'
  report = fastformers.compress(pipeline, f'{teacher}:best', str(tmp_path / 'out'))
  assert sorted(os.listdir(tmp_path / 'out' / 'L1')) == ['distilled', 'init', 'int8']
  assert set(report['stages']['L1']) == {'dynamic length', 'distillation', 'int8'}
  rows = {r['model']: r for r in report['rows']}
  assert set(rows) == {'teacher', 'L1 distilled', 'L1 int8', 'teacher, static length'}
  assert rows['L1 int8']['heads'] == rows['L1 distilled']['heads'] == 4  # nothing removed
