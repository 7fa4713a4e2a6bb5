"""The integer-only transform of a saved fully quantized run, and its comparison with the
fake-quant twin (research/runs/transform.py 'integer_only', research/runs/integer_twin.py)."""
from __future__ import annotations

import pytest

from research.runs import integer_twin, run_data, transform
from research.train import saved_runs
from research.transforms import qat


@pytest.fixture(scope='module')
def fq_run(make_tiny_run, tmp_path_factory):
  """A tiny SST-2 run rewritten as fully quantized BERT (w8a8, every group)."""
  data = run_data.load(make_tiny_run(2))
  encoder = data.run.model.encoder.replace(products=qat.qat_rules('w8,a8', attention=True),
                                           hooks=qat.full_quant_rules('w8,a8'))
  out = tmp_path_factory.mktemp('runs') / 'fq'
  data.write(str(out), data.run.model.clone(encoder=encoder), data.run.params)
  return str(out)


def test_integer_only_run_reloads_and_scores(fq_run, tmp_path):
  summary = transform.transform_run(fq_run, str(tmp_path / 'int'), 'integer_only')
  assert summary['params_after'] == summary['params_before']
  assert summary['sites']['products'] == ['integer_act:w8,a8', 'integer:w8,a8']
  run = saved_runs.load_run(str(tmp_path / 'int'))
  assert {spec for _, spec in run.model.encoder.nonlinear} >= {'integer:a8', 'integer:a8,token'}
  data = run_data.load(str(tmp_path / 'int'))
  assert 0.0 <= data.score(run.model, run.params) <= 100.0


def test_a_float_run_is_refused_by_name(make_tiny_run, tmp_path):
  with pytest.raises(ValueError, match='no fake-quantized products'):
    transform.transform_run(make_tiny_run(1), str(tmp_path / 'int'), 'integer_only')


def test_comparison_reports_the_twin_its_band_and_agreement(fq_run):
  report = integer_twin.compare(fq_run, perturbations=(1e-4, -1e-4))
  assert report['metric'] == 'accuracy' and report['examples'] > 0
  assert report['gap'] == pytest.approx(report['integer'] - report['twin'])
  assert set(report['perturbed']) == {'0.0001', '-0.0001'}
  assert report['band']['min'] <= report['band']['mean'] <= report['band']['max']
  assert set(report['agreement']) == {'integer', '0.0001', '-0.0001'}
  assert all(0.0 <= v <= 1.0 for v in report['agreement'].values())
