"""Runs as the unit of composition, the step's teachers and gradient accumulation.

* `init_from` a saved run whose architecture matches no published checkpoint (pruned
  heads, per-layer FFN widths), rebuilt from its own model.json;
* export of a run to a Hugging Face folder (pruned heads) or a clear refusal;
* a frozen in-step teacher: no gradient, no optimizer state, not checkpointed, and the
  same training as the cached soft targets;
* accumulation: batch b x k micro-batches equals one batch of k * b.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from research.models import projections
from research.train import saved_runs, trainer
from research.train.defaults import trainer_defaults
from research.train.metric_writer import read_metrics
from research.runs import export


@pytest.fixture
def config(tiny_model, synthetic_root):
  def make(**overrides):
    c = trainer_defaults()
    c.model = tiny_model
    c.data_dir = str(Path(synthetic_root) / 'glue')
    c.train_examples, c.eval_examples = 64, 32
    c.batch_size, c.eval_batch_size = 16, 16
    c.max_length, c.pad_multiple, c.bucket_batches = 32, 32, 2
    c.num_epochs, c.total_steps = 0, 4
    c.log_every, c.eval_every, c.checkpoint_every = 1, 4, 4
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_ratio = 0.5
    c.dropout = 0.0
    for key, value in overrides.items():
      if '.' in key:
        outer, inner = key.split('.')
        c[outer][inner] = value
      else:
        c[key] = value
    return c
  return make


def flat(tree):
  return traverse_util.flatten_dict(tree, sep='/')


def prune(run: saved_runs.SavedRun, heads: tuple[int, int], widths: tuple[int, int]):
  """Keeps the first heads and FFN units of each layer (a stand-in for a pruning run)."""
  params = jax.tree.map(np.asarray, run.params)
  encoder = params['encoder']
  for i, (n, w) in enumerate(zip(heads, widths)):
    attention, mlp = encoder[f'layer_{i}']['attention'], encoder[f'layer_{i}']['mlp']
    for name in ('query', 'key', 'value'):
      attention[name] = {'kernel': attention[name]['kernel'][:, :n],
                         'bias': attention[name]['bias'][:n]}
    attention['out']['kernel'] = attention['out']['kernel'][:n]
    mlp['intermediate'] = {'kernel': mlp['intermediate']['kernel'][:, :w],
                           'bias': mlp['intermediate']['bias'][:w]}
    mlp['output']['kernel'] = mlp['output']['kernel'][:w]
  encoder_config = run.model.encoder.replace(
      num_heads=heads, intermediate_size=widths if widths[0] != widths[1] else widths[0])
  return run.model.clone(encoder=encoder_config), params


def test_init_from_a_run_of_a_non_standard_architecture(config, tmp_path):
  trainer.train_and_evaluate(config(), tmp_path / 'base')
  base = saved_runs.load_run(str(tmp_path / 'base'), 'latest')
  model, params = prune(base, heads=(3, 4), widths=(48, 64))
  saved_runs.write_run(str(tmp_path / 'pruned'), model, params, config=base.config,
                       tokenizer=saved_runs.run_tokenizer(str(tmp_path / 'base')))
  # Rebuilt from its own folder: no pre-trained checkpoint is read.
  pruned = saved_runs.load_run(str(tmp_path / 'pruned'))
  assert pruned.model.encoder.num_heads == (3, 4)
  assert pruned.model.encoder.intermediate_size == (48, 64)

  # A new run starts from it (the head too: same task), fine-tunes, and records the
  # pruned architecture in its own model.json.
  result = trainer.train_and_evaluate(
      config(init_from=f'{tmp_path / "pruned"}:best', model='/nonexistent/checkpoint'),
      tmp_path / 'next')
  described = json.loads((tmp_path / 'next' / 'model.json').read_text())
  assert described['encoder']['num_heads'] == [3, 4]
  assert described['encoder']['intermediate_size'] == [48, 64]
  assert (tmp_path / 'next' / 'tokenizer' / 'tokenizer.json').is_file()
  assert np.isfinite(read_metrics(tmp_path / 'next', 'train')[-1]['loss'])
  first = read_metrics(tmp_path / 'next', 'train')[0]
  # Step 1's loss is the pruned model's on the first batch: it started from those params.
  assert first['loss'] < 1.0
  assert result['params']['encoder']['layer_0']['attention']['query']['kernel'].shape == (32, 3, 8)
  # Another task (tagging) takes the encoder and starts a fresh head.
  tagging = config(init_from=str(tmp_path / 'pruned'), task='conll2003',
                   data_dir=str(Path(config().data_dir).parent), max_length=64,
                   pad_multiple=64, total_steps=2, eval_every=2, checkpoint_every=2)
  out = trainer.train_and_evaluate(tagging, tmp_path / 'tagger')
  assert out['params']['head']['out']['kernel'].shape == (32, 9)

  with pytest.raises(FileNotFoundError, match='model.json'):
    (tmp_path / 'nomodel').mkdir()
    trainer.train_and_evaluate(config(init_from=str(tmp_path / 'nomodel')), tmp_path / 'x')
  with pytest.raises(ValueError, match='another architecture'):
    saved_runs.write_model(str(tmp_path / 'next'), base.model)


def test_a_layer_pruned_to_no_heads_saves_loads_and_resumes(config, tmp_path):
  # orbax cannot write zero-size arrays ([hidden, 0, head_dim] kernels): they are
  # left out of the files and rebuilt from the model's shapes.
  trainer.train_and_evaluate(config(), tmp_path / 'base')
  base = saved_runs.load_run(str(tmp_path / 'base'), 'latest')
  model, params = prune(base, heads=(0, 4), widths=(64, 64))
  saved_runs.write_run(str(tmp_path / 'pruned'), model, params, config=base.config,
                       tokenizer=saved_runs.run_tokenizer(str(tmp_path / 'base')))
  pruned = saved_runs.load_run(str(tmp_path / 'pruned'))
  assert pruned.params['encoder']['layer_0']['attention']['query']['kernel'].shape == (32, 0, 8)
  ids = np.arange(1, 9, dtype=np.int32)[None]
  want, _ = model.apply({'params': params}, ids, np.ones_like(ids))
  got, _ = pruned.model.apply({'params': pruned.params}, ids, np.ones_like(ids))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  # Fine-tuned from it, then resumed: the train state's empty arrays come back too.
  run = config(init_from=str(tmp_path / 'pruned'), model='/nonexistent/checkpoint')
  first = trainer.train_and_evaluate(run, tmp_path / 'next')
  run.total_steps = 6
  again = trainer.train_and_evaluate(run, tmp_path / 'next')
  assert again['params']['encoder']['layer_0']['attention']['out']['kernel'].shape == (0, 8, 32)
  assert np.isfinite(read_metrics(tmp_path / 'next', 'train')[-1]['loss'])
  assert first['steps'] == 4 and again['steps'] == 6


def test_export_run_to_transformers(config, tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  trainer.train_and_evaluate(config(pooling='pooler'), tmp_path / 'base')
  base = saved_runs.load_run(str(tmp_path / 'base'), 'latest')
  model, params = prune(base, heads=(3, 2), widths=(64, 64))
  saved_runs.write_run(str(tmp_path / 'pruned'), model, params, config=base.config)
  export.export_run(str(tmp_path / 'pruned'), str(tmp_path / 'hf'))
  reloaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(tmp_path / 'hf'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  ids = np.random.default_rng(0).integers(1000, 2000, (2, 9))
  mask = np.ones_like(ids)
  with torch.no_grad():
    ref = reloaded.eval()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  logits, _ = model.apply({'params': params}, ids, mask)
  np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4)
  # Per-layer FFN widths too: padded with zero units, the outputs stay the same.
  model, params = prune(base, heads=(4, 1), widths=(48, 64))
  saved_runs.write_run(str(tmp_path / 'ffn'), model, params, config=base.config)
  export.export_run(str(tmp_path / 'ffn'), str(tmp_path / 'hf2'))
  reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / 'hf2'))
  with torch.no_grad():
    ref = reloaded.eval()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  np.testing.assert_allclose(model.apply({'params': params}, ids, mask)[0], ref.logits.numpy(),
                             atol=1e-4)
  # Unpadded: pruned heads as `pruned_heads` (transformers < 5); per-layer FFN widths
  # have no Hugging Face form, a clear refusal.
  export.export_run(str(tmp_path / 'pruned'), str(tmp_path / 'hf3'), pad=False)
  hf_config = json.loads((tmp_path / 'hf3' / 'config.json').read_text())
  assert hf_config['pruned_heads'] == {'0': [3], '1': [2, 3]}
  with pytest.raises(ValueError, match='per-layer FFN widths'):
    export.export_run(str(tmp_path / 'ffn'), str(tmp_path / 'hf4'), pad=False)


def test_frozen_teacher_in_the_step(config, tmp_path):
  teacher_dir = tmp_path / 'teacher'
  trainer.train_and_evaluate(config(seed=5), teacher_dir)
  teacher_files = {p: p.stat().st_mtime_ns for p in teacher_dir.rglob('*') if p.is_file()}

  def student(mode):
    return config(**{'distill.teachers': str(teacher_dir), 'distill.checkpoint': 'latest',
                     'distill.alpha': 0.7, 'distill.temperature': 2.0, 'distill.mode': mode})
  in_step = trainer.train_and_evaluate(student('in_step'), tmp_path / 'in_step')
  cached = trainer.train_and_evaluate(student('cached'), tmp_path / 'cached')
  plain = trainer.train_and_evaluate(config(), tmp_path / 'plain')
  # The teacher's folder is untouched, and the same targets give the same training.
  assert {p: p.stat().st_mtime_ns for p in teacher_dir.rglob('*') if p.is_file()} == teacher_files
  logged = read_metrics(tmp_path / 'in_step', 'train')[-1]
  assert logged['loss'] == pytest.approx(0.3 * logged['task_loss'] + 0.7 * logged['distill_loss'],
                                         rel=1e-5)
  for a, b in zip(jax.tree.leaves(in_step['params']), jax.tree.leaves(cached['params'])):
    np.testing.assert_allclose(a, b, atol=2e-4)
  # The checkpointed train state holds the student only: the same tree as a plain run
  # (params, optimizer state, RNG), with no teacher leaves.
  def saved_tree(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
      state = manager.restore(manager.latest_step(), args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))['state']
    finally:
      manager.close()
    return {jax.tree_util.keystr(k): np.shape(v)
            for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}
  assert saved_tree(tmp_path / 'in_step') == saved_tree(tmp_path / 'plain')
  del plain

  # No gradient reaches the teacher: its params are an argument behind stop_gradient.
  from research.train import teachers as teachers_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  from research.transforms import distill  # pylint: disable=g-import-not-at-top
  run = saved_runs.load_run(str(teacher_dir), 'latest')
  terms = [step_lib.TaskLoss(run.objective, 0.5),
           distill.TeacherSoftTargets(run.objective, 2.0, 0.5)]
  loss = step_lib.make_loss_fn(run.model, terms, teachers=(run.model,))
  ids = jnp.asarray(np.random.default_rng(0).integers(1000, 2000, (4, 8)), jnp.int32)
  batch = {'input_ids': ids, 'attention_mask': jnp.ones_like(ids),
           'labels': jnp.array([0, 1, 1, 0]), 'weights': jnp.ones(4)}
  grads = jax.grad(lambda tp: loss(run.params, batch, jax.random.PRNGKey(0), (tp,))[0])(
      run.params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
  student_grads = jax.grad(lambda p: loss(p, batch, jax.random.PRNGKey(0), (run.params,))[0])(
      run.params)
  assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(student_grads))
  with pytest.raises(ValueError, match='teacher'):
    loss(run.params, batch, jax.random.PRNGKey(0), ())
  del teachers_lib


def test_accumulation_equals_one_large_batch(config, tmp_path):
  """batch 8 x 2 micro-batches == batch 16: the same LR trace, EMA and params."""
  whole = trainer.train_and_evaluate(config(batch_size=16, ema_decay=0.5), tmp_path / 'whole')
  micro = trainer.train_and_evaluate(
      config(batch_size=8, ema_decay=0.5, **{'optimizer.accumulate_steps': 2}),
      tmp_path / 'micro')
  lr = lambda d: [r['learning_rate'] for r in read_metrics(tmp_path / d, 'train')]
  assert lr('micro') == lr('whole') and len(lr('whole')) == 4
  losses = lambda d: [r['loss'] for r in read_metrics(tmp_path / d, 'train')]
  np.testing.assert_allclose(losses('micro'), losses('whole'), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(whole['params']), jax.tree.leaves(micro['params'])):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('token_loss', ['batch', 'fixed'])
def test_accumulation_weighs_micro_batches_by_their_tokens(token_loss):
  """Tagging: micro-batches with different labelled-token counts still equal the batch."""
  from research.models import EncoderConfig  # pylint: disable=g-import-not-at-top
  from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
  from research.objectives import Tagging  # pylint: disable=g-import-not-at-top
  from research.train.step import TaskLoss, init_state, make_train_step  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  encoder = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                          intermediate_size=16, max_position_embeddings=16, hidden_dropout=0.0,
                          attention_dropout=0.0)
  model = TaskModel(encoder, Tagging(num_labels=3, head_dropout=0.0, token_loss=token_loss,
                                     tokens_per_example=4.0))
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1, 50, (4, 8)), jnp.int32)
  labels = rng.integers(0, 3, (4, 8))
  # Rows 0 and 2 (micro-batch 0) carry 7 and 6 labels, rows 1 and 3 (micro-batch 1) 1 each.
  labels[0, 7:] = labels[2, 6:] = -100
  labels[1, 1:] = labels[3, 1:] = -100
  batch = {'input_ids': ids, 'attention_mask': jnp.ones_like(ids),
           'labels': jnp.asarray(labels), 'weights': jnp.ones(4)}
  params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))['params']
  tx = optax.sgd(1.0)
  results = []
  for k in (1, 2, 4):
    step = jax.jit(make_train_step(model, tx, [TaskLoss(model.objective)], accumulate_steps=k))
    state, metrics = step(init_state(params, tx, 0), batch)
    results.append((state['params'], float(metrics['loss'])))
  for got, loss in results[1:]:
    assert loss == pytest.approx(results[0][1], rel=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(got)):
      np.testing.assert_allclose(a, b, atol=1e-6)


def test_transformed_runs_reload_and_fine_tune(config, tmp_path):
  """low_rank and share write runs that load, score and start the next run."""
  from research.runs import transform  # pylint: disable=g-import-not-at-top
  trainer.train_and_evaluate(config(pooling='pooler'), tmp_path / 'base')
  low = transform.transform_run(f'{tmp_path / "base"}:latest', str(tmp_path / 'low'),
                                'low_rank', rank=4, sites=r'layer_\d+/mlp/.*')
  assert low['params_after'] < low['params_before'] and len(low['sites']) == 4
  factored = transform.transform_run(f'{tmp_path / "base"}:latest', str(tmp_path / 'emb'),
                                     'embeddings', embedding_size=8)
  assert factored['params_after'] < factored['params_before']
  assert saved_runs.load_run(str(tmp_path / 'emb')).model.encoder.embed_size == 8
  shared = transform.transform_run(f'{tmp_path / "base"}:latest', str(tmp_path / 'shared'),
                                   'share', parts='attention')
  assert shared['params_after'] < shared['params_before']
  int8 = transform.transform_run(f'{tmp_path / "base"}:latest', str(tmp_path / 'int8'), 'ptq',
                                 calibration='mse', calibration_examples=32)
  assert int8['sites']['sites'] == 12
  from research.runs import scoring  # pylint: disable=g-import-not-at-top
  scores = scoring.score_runs([str(tmp_path / 'base'), str(tmp_path / 'int8')], 'latest')
  base_acc = scores['runs'][str(tmp_path / 'base')]['accuracy']
  assert abs(scores['runs'][str(tmp_path / 'int8')]['accuracy'] - base_acc) <= 10.0
  # Compressed runs export as the dense kernels they stand for; transformers loads them.
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  ids = np.random.default_rng(0).integers(1000, 2000, (2, 9))
  mask = np.ones_like(ids)
  for name in ('low', 'int8'):
    run = saved_runs.load_run(str(tmp_path / name))
    export.export_run(str(tmp_path / name), str(tmp_path / f'{name}_hf'))
    reloaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(tmp_path / f'{name}_hf'), output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'], info
    with torch.no_grad():
      ref = reloaded.eval()(input_ids=torch.from_numpy(ids),
                            attention_mask=torch.from_numpy(mask)).logits.numpy()
    dense = run.model.clone(encoder=run.model.encoder.replace(projections=()))
    expected, _ = dense.apply({'params': projections.densify(
        run.model.encoder.projections, run.params)}, ids, mask)
    np.testing.assert_allclose(expected, ref, atol=1e-4)
    if name == 'low':  # the factors' product is exact: the run's own logits
      np.testing.assert_allclose(run.model.apply({'params': run.params}, ids, mask)[0], ref,
                                 atol=1e-4)
  for name in ('low', 'shared'):
    run = saved_runs.load_run(str(tmp_path / name))
    assert run.model.encoder != saved_runs.load_run(str(tmp_path / 'base'), 'latest').model.encoder
    out = trainer.train_and_evaluate(config(init_from=str(tmp_path / name), total_steps=2,
                                            eval_every=2, checkpoint_every=2),
                                     tmp_path / f'{name}_ft')
    assert np.isfinite(read_metrics(tmp_path / f'{name}_ft', 'train')[-1]['loss'])
    assert out['params']['encoder'].keys() == run.params['encoder'].keys()


def test_quantization_aware_training_is_a_config_of_the_same_trainer(config, tmp_path):
  """--config.quant=w8,a8: the model's products fake-quantize; the run reloads as QAT."""
  from research.runs import scoring  # pylint: disable=g-import-not-at-top
  result = trainer.train_and_evaluate(config(quant='w8,a8'), tmp_path / 'qat')
  described = json.loads((tmp_path / 'qat' / 'model.json').read_text())
  assert ['.*', 'fake_quant:w8,a8'] in described['encoder']['products']
  assert np.isfinite(read_metrics(tmp_path / 'qat', 'train')[-1]['loss'])
  rescored = scoring.score_runs([str(tmp_path / 'qat')], which='latest')
  assert rescored['runs'][str(tmp_path / 'qat')]['accuracy'] == pytest.approx(
      result['final']['accuracy'])
  with pytest.raises(ValueError, match='quantization spec'):
    trainer.train_and_evaluate(config(quant='int8'), tmp_path / 'bad')
  # Fully quantized BERT: hooks on softmax, GELU, LayerNorms and embeddings, recorded too.
  trainer.train_and_evaluate(config(quant='w8,a8', quant_full=True, total_steps=2,
                                    eval_every=2, checkpoint_every=2), tmp_path / 'fq')
  described = json.loads((tmp_path / 'fq' / 'model.json').read_text())
  assert any('softmax' in rule[0] for rule in described['encoder']['hooks'])
  assert np.isfinite(read_metrics(tmp_path / 'fq', 'train')[-1]['loss'])
  assert saved_runs.load_run(str(tmp_path / 'fq')).model.encoder.hooks
