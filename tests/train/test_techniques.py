"""Techniques plug into the trainer through `Technique` (research/transforms/technique.py):
a new one enters by the table alone, and LoRA runs end to end as a config option."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from research.train import defaults, saved_runs, techniques, trainer
from research.transforms import lora
from research.transforms.technique import OwnedState, Technique
from research.runs import export


def tiny_config(model, root, **overrides):
  c = defaults.trainer_defaults()
  c.model = model
  c.data_dir = str(Path(root) / 'glue')
  c.train_examples, c.eval_examples = 64, 32
  c.batch_size, c.eval_batch_size = 16, 16
  c.max_length, c.pad_multiple = 32, 32
  c.num_epochs, c.total_steps = 0, 4
  c.log_every, c.eval_every = 2, 4
  c.optimizer.learning_rate = 1e-2
  for key, value in overrides.items():
    c[key] = value
  return c


class CountSteps(Technique):
  """A made-up technique: weighs the task loss, keeps a step counter in the state, and
  adds a constant per-example field that the loss term reads."""
  name, config_keys = 'count_steps', ()

  def active(self, config):
    return True

  def loss_terms(self, config, setup, terms, teacher_encoders=()):
    return [dataclasses.replace(t, weight=0.5) for t in terms]

  def state(self, config):
    return OwnedState(init=lambda params: np.zeros((), np.int32),
                      update=lambda count, params, step: count + 1)

  def batch_fields(self, config, setup):
    return lambda index: {'ones': np.ones(len(index), np.float32)}


def test_a_new_technique_plugs_in_through_the_table_alone(tiny_model, synthetic_root,
                                                           tmp_path, monkeypatch):
  monkeypatch.setattr(techniques, 'TECHNIQUES', techniques.TECHNIQUES + (CountSteps(),))
  result = trainer.train_and_evaluate(tiny_config(tiny_model, synthetic_root),
                                      tmp_path / 'run')
  assert result['steps'] == 4 and np.isfinite(result['final']['accuracy'])
  # Its state was checkpointed with the rest of the train state and counted every step.
  manager = ocp.CheckpointManager(str(tmp_path / 'run' / 'checkpoints'))
  saved = manager.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  manager.close()
  assert int(saved['count_steps']) == 4


def test_lora_trains_only_its_factors_and_exports_merged(tiny_model, synthetic_root, tmp_path):
  config = tiny_config(tiny_model, synthetic_root, pooling='pooler')
  config.lora.rank, config.lora.alpha = 4, 8.0
  result = trainer.train_and_evaluate(config, tmp_path / 'lora')
  # Trainable: the factors (query and value of 2 layers: (32 + 32) * 4 each) and the head.
  factors = 2 * 2 * (32 * 4 + 4 * 32)
  assert factors < result['trainable_params'] < factors + 32 * 32 + 32 + 2 * 32 + 2 + 1
  run = saved_runs.load_run(str(tmp_path / 'lora'))
  assert (lora.DEFAULT_TARGETS, 'lora:4:8') in run.model.encoder.projections
  from research.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
  _, base = load_pretrained(tiny_model)
  trained = run.params['encoder']
  for layer in ('layer_0', 'layer_1'):
    for name in ('query', 'key', 'value'):  # pre-trained kernels frozen
      np.testing.assert_array_equal(trained[layer]['attention'][name]['kernel'],
                                    base[layer]['attention'][name]['kernel'])
    assert np.abs(trained[layer]['attention']['query']['lora_b']).max() > 0  # B moved
  # Merge on export: a plain BERT classifier with W + (alpha / r) A B, same logits.
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  export.export_run(str(tmp_path / 'lora'), str(tmp_path / 'hf'))
  reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(tmp_path / 'hf')).eval()
  ids = np.random.default_rng(0).integers(1000, 2000, (2, 9))
  mask = np.ones_like(ids)
  with torch.no_grad():
    ref = reloaded(input_ids=torch.from_numpy(ids),
                   attention_mask=torch.from_numpy(mask)).logits.numpy()
  logits, _ = run.model.apply({'params': run.params}, ids, mask)
  np.testing.assert_allclose(logits, ref, atol=1e-4)
  # A run started from the LoRA run keeps its adapters (model.json names the kind).
  follow = tiny_config(tiny_model, synthetic_root, pooling='pooler', total_steps=2,
                       init_from=str(tmp_path / 'lora'))
  again = trainer.train_and_evaluate(follow, tmp_path / 'follow')
  assert jax.tree.leaves(again['params']['encoder']['layer_0']['attention']['query'])


def test_technique_fields_are_checked_even_when_off_and_reset_for_derived_runs():
  config = defaults.trainer_defaults()
  config.distill.hidden_weight = 1.0
  with pytest.raises(ValueError, match='needs config.distill.teachers'):
    trainer.check_config(config)
  config = defaults.trainer_defaults()
  config.quant_full = True
  with pytest.raises(ValueError, match='need config.quant'):
    trainer.check_config(config)
  config = defaults.trainer_defaults()
  config.quant, config.ema_decay, config.lora.rank = 'w8,a8', 0.9, 4
  assert [t.name for t in techniques.active(config)] == ['qat', 'lora', 'ema']
  reset = defaults.reset_techniques(config, techniques.config_keys())
  assert not techniques.active(reset)
  assert reset.model == config.model


def test_config_schema_fills_old_configs_and_refuses_unknown_fields():
  old = {'model': 'minilm-l6', 'task': 'sst2', 'optimizer': {'learning_rate': 3e-5}}
  filled = defaults.complete(old, strict=False)
  assert filled.optimizer.learning_rate == 3e-5 and filled.optimizer.name == 'adamw'
  assert filled.corpus.source == '' and filled.lora.rank == 0 and filled.token_loss == 'fixed'
  with pytest.raises(ValueError, match=r'optimizer.learnin_rate \(did you mean '
                                       r'optimizer.learning_rate\?\)'):
    defaults.complete({'optimizer': {'learnin_rate': 1e-4}})
  with pytest.raises(ValueError, match='must be a group of fields'):
    defaults.complete({'optimizer': 0.1})


def test_a_run_written_before_the_schema_grew_still_loads_and_seeds_runs(
    tiny_model, synthetic_root, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  trainer.train_and_evaluate(tiny_config(tiny_model, synthetic_root, total_steps=2,
                                         eval_every=2), tmp_path / 'old')
  path = tmp_path / 'old' / 'config.json'
  values = json.loads(path.read_text())
  for key in ('corpus', 'lora', 'token_loss', 'head_activation', 'quant_full'):
    values.pop(key)  # fields later versions added
  values['sparsity'].pop('initial')
  values['retired_field'] = 1  # one a later version dropped
  path.write_text(json.dumps(values))
  run = saved_runs.load_run(str(tmp_path / 'old'))
  assert run.config.lora.rank == 0 and run.config.retired_field == 1
  follow = tiny_config(tiny_model, synthetic_root, total_steps=2, eval_every=2,
                       init_from=f'{tmp_path / "old"}:best')
  assert np.isfinite(trainer.train_and_evaluate(follow, tmp_path / 'new')['final']['accuracy'])
