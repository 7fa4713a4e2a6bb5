"""Smoke runs of the layer-probe and freezing studies (research/runs; their configs'
`runlocal` variants, real MiniLM and SST-2 slices), and their command lines.

Each study's `run(config, out)` runs its config's `runlocal` variant into tmp_path; we
check the files it writes and the invariants of its numbers (not the accuracies
themselves: the slices are tiny).
"""
from __future__ import annotations

import json
import logging
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.configs import common

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def sst2_dir():
  data_dir = common.default_data_dir('glue')
  if not data_dir or not (Path(data_dir) / 'SST-2' / 'train.tsv').is_file():
    pytest.skip('SST-2 TSVs not found (set RESEARCH_DATA_DIR)')
  return data_dir


def png_size(path: Path) -> tuple[int, int]:
  """(width, height) from the IHDR chunk; asserts the PNG signature and chunk type."""
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE, 'not a PNG file'
  assert data[12:16] == b'IHDR'
  return struct.unpack('>II', data[16:24])


def test_layer_probe_runlocal(tmp_path, sst2_dir, minilm_folder, caplog):
  from research.runs import layer_probe  # pylint: disable=g-import-not-at-top
  from experiments.configs import layer_probe as configs  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'layer_probe'
  config = configs.get_config('runlocal')
  config.data_dir = sst2_dir
  config.cache_dir = str(tmp_path / 'features')
  layer_probe.run(config, str(out))

  result = json.loads((out / 'results.json').read_text())
  num_layers = result['config']['num_layers']
  assert num_layers == 6
  assert result['config']['train_size'] == 256 and result['config']['dev_size'] == 128
  assert [row['layer'] for row in result['layers']] == list(range(num_layers + 1))
  for row in result['layers']:
    assert 0.0 <= row['dev_accuracy'] <= 100.0
    assert 0.0 <= row['train_accuracy'] <= 100.0
  mix = result['mix']
  assert 0.0 <= mix['dev_accuracy'] <= 100.0
  assert len(mix['weights']) == num_layers + 1
  np.testing.assert_allclose(sum(mix['weights']), 1.0, atol=1e-5)
  assert all(w > 0 for w in mix['weights'])
  assert np.isfinite(mix['gamma'])
  assert all(np.isfinite(result['train_loss_per_epoch']))

  width, height = png_size(out / 'layer_probe.png')
  assert width > 100 and height > 100
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  assert plt.imread(out / 'layer_probe.png').shape[:2] == (height, width)

  table = (out / 'results.md').read_text()
  assert '| scalar mix |' in table
  assert len(re.findall(r'^\| layer \d', table, re.M)) == num_layers + 1

  # A second run reads both splits from the feature cache and reproduces the numbers.
  assert len(list((tmp_path / 'features').glob('*.npz'))) == 2
  with caplog.at_level(logging.INFO):
    again = layer_probe.run(config, str(tmp_path / 'again'))
  assert sum('loaded cached features' in r.getMessage() for r in caplog.records) == 2
  assert not any(r.getMessage().startswith('encoded ') for r in caplog.records)
  assert again['layers'] == result['layers'] and again['mix'] == result['mix']


def test_scalar_mix_of_pooled_equals_pooled_mix(minilm_folder):
  """The docstring's claim: mean pooling commutes with the scalar mix."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from research.models.encoder import mean_pool  # pylint: disable=g-import-not-at-top
  from research.transforms.layer_mix import scalar_mix  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  hs = tuple(jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32) for _ in range(4))
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
  w, gamma = jnp.asarray([0.3, -1.0, 2.0, 0.1]), jnp.asarray(1.7)
  pooled_mix = mean_pool(scalar_mix(w, gamma, hs), mask)
  mix_pooled = scalar_mix(w, gamma, tuple(mean_pool(h, mask) for h in hs))
  np.testing.assert_allclose(pooled_mix, mix_pooled, rtol=1e-5, atol=1e-6)


def test_freezing_runlocal(tmp_path, sst2_dir, minilm_folder):
  from research.runs import freezing  # pylint: disable=g-import-not-at-top
  from experiments.configs import freezing as configs  # pylint: disable=g-import-not-at-top
  from research.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
  from research.transforms.freeze import param_paths  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'freezing'
  # Four presets keep this near a minute: each run compiles its own train step.
  config = configs.get_config('runlocal')
  config.data_dir = sst2_dir
  config.presets = 'full,feature_extractor,bitfit,lora:4'
  freezing.run(config, str(out))

  result = json.loads((out / 'results.json').read_text())
  rows = {row['preset']: row for row in result['rows']}
  assert list(rows) == ['full', 'feature_extractor', 'bitfit', 'lora:4']
  for row in rows.values():
    assert 0.0 <= row['dev_accuracy'] <= 100.0
    assert row['steps'] == 4 and row['wall_seconds'] > 0
  full, fe, bitfit = rows['full'], rows['feature_extractor'], rows['bitfit']
  assert len({row['total_params'] for name, row in rows.items() if name != 'lora:4'}) == 1
  assert full['trainable_params'] == full['total_params']

  # Feature extractor: the head only (hidden * 2 + 2), far less state than full.
  config, encoder_params = load_pretrained('minilm-l6')
  head = config.hidden_size * 2 + 2
  assert fe['trainable_params'] == head
  assert fe['trainable_params'] < full['trainable_params'] / 1000
  assert fe['optimizer_state_bytes'] < full['optimizer_state_bytes'] / 1000
  # Adam keeps two float32 moments per trainable parameter.
  assert full['optimizer_state_bytes'] >= 8 * full['trainable_params']
  assert fe['optimizer_state_bytes'] >= 8 * fe['trainable_params']

  # BitFit: every encoder bias scalar (incl. LayerNorm biases) plus the head.
  import jax  # pylint: disable=g-import-not-at-top
  sizes = [int(np.size(x)) for x in jax.tree.leaves(encoder_params)]
  bias_scalars = sum(s for path, s in zip(param_paths(encoder_params), sizes)
                     if path.endswith('/bias'))
  assert bias_scalars > 0
  assert bitfit['trainable_params'] == bias_scalars + head
  assert fe['optimizer_state_bytes'] < bitfit['optimizer_state_bytes'] < (
      full['optimizer_state_bytes'] / 100)

  # LoRA: rank-4 factors of query and value in 6 layers ((384 + 384) * 4 each) + head.
  lora = rows['lora:4']
  factors = 6 * 2 * (384 + 384) * 4
  assert lora['trainable_params'] == factors + head
  assert lora['total_params'] == full['total_params'] + factors
  assert fe['optimizer_state_bytes'] < lora['optimizer_state_bytes'] < (
      full['optimizer_state_bytes'] / 100)
  assert (out / 'results.md').read_text().count('\n| ') == 5  # header + 4 rows
  assert not (out / 'workdirs' / 'full').exists()


@pytest.mark.parametrize('module,arg', [
    ('glue', None), ('glue', 'task=mrpc,runlocal'), ('glue', 'task=sst2,cpu_budget'),
    ('glue', 'task=sst2,tuned'), ('conll', None), ('squad', 'runlocal')])
def test_every_config_passes_the_trainer_and_optimizer_checks(module, arg):
  import importlib  # pylint: disable=g-import-not-at-top
  from research.train.optimizers import validate_config  # pylint: disable=g-import-not-at-top
  from research.train.trainer import check_config  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'experiments.configs.{module}').get_config(arg)
  check_config(config)
  validate_config({**config.optimizer.to_dict(), 'total_steps': 10})
  if arg and 'tuned' in arg:
    assert (config.optimizer.llrd, config.ema_decay) == (0.9, 0.999)
  else:
    assert config.optimizer.llrd == 1.0 and config.ema_decay == 0.0


def test_config_argument_errors_name_the_valid_keys():
  with pytest.raises(ValueError, match=r"unknown name 'tunde'.*tuned"):
    common.parse_arg('tunde', tuned=False, task='sst2')


def test_layer_probe_and_freezing_configs():
  from research.runs import freezing  # pylint: disable=g-import-not-at-top
  from experiments.configs import freezing as freezing_configs  # pylint: disable=g-import-not-at-top
  from experiments.configs import layer_probe as probe_configs  # pylint: disable=g-import-not-at-top
  from research.train.optimizers import validate_config  # pylint: disable=g-import-not-at-top
  from research.train.trainer import check_config  # pylint: disable=g-import-not-at-top
  # runlocal is the old --runlocal: 256 train / 128 dev, max_length 32, 3 epochs, batch 64.
  full, local = probe_configs.get_config(), probe_configs.get_config('runlocal')
  assert (full.train_examples, full.eval_examples, full.epochs, full.pooling) == (
      0, 0, 10, 'mean')
  assert (local.train_examples, local.eval_examples, local.max_length, local.epochs,
          local.batch_size, local.pad_multiple) == (256, 128, 32, 3, 64, 16)
  assert probe_configs.get_config('pooling=cls,task=cola').pooling == 'cls'

  config = freezing_configs.get_config()
  names = freezing.presets(config)
  assert names == ['full', 'feature_extractor', 'bitfit', 'bottom:3', 'lora:8']
  rates = {}
  for name in names + ['frozen_embeddings', 'bottom:5']:
    trainer_config = freezing.trainer_config(config, name)
    check_config(trainer_config)
    validate_config({**trainer_config.optimizer.to_dict(), 'total_steps': 10})
    lora = name.startswith('lora:')
    assert trainer_config.freeze == ('full' if lora else name)
    assert trainer_config.lora.rank == (8 if lora else 0)
    assert trainer_config.layer_mix == 'top'
    rates[name] = trainer_config.optimizer.learning_rate
  assert rates == {'full': 1e-4, 'feature_extractor': 1e-3, 'bitfit': 1e-3, 'lora:8': 1e-3,
                   'bottom:3': 1e-4, 'frozen_embeddings': 1e-4, 'bottom:5': 1e-4}
  local = freezing_configs.get_config('runlocal')
  assert (local.train_examples, local.eval_examples, local.batch_size, local.max_length,
          local.pad_multiple) == (64, 64, 16, 32, 32)
  config.presets = 'full,nope'
  with pytest.raises(ValueError, match="Unknown freeze preset 'nope'"):
    freezing.presets(config)


@pytest.mark.parametrize('script,override,error', [
    ('layer_probe', '--config.task=stsb', 'needs a classification task'),
    ('freezing', '--config.presets=full,nope', "Unknown freeze preset 'nope'"),
])
def test_command_line_reads_the_config_and_its_overrides(tmp_path, script, override,
                                                         error):
  """The absl entry point: --config FILE:runlocal, --config.field=value, --out.

  Each override makes the run fail before any model is loaded, so this stays cheap.
  """
  root = Path(__file__).resolve().parents[2]
  proc = subprocess.run(
      [sys.executable, '-m', f'experiments.{script}',
       f'--config=experiments/configs/{script}.py:runlocal', override,
       f'--out={tmp_path / "out"}'], cwd=root, capture_output=True, text=True,
      timeout=300, check=False)
  assert proc.returncode != 0
  assert error in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / 'out').exists()
