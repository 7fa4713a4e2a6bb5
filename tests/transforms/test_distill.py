"""Distillation targets and losses (research/transforms/distill.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.objectives import Classification, Regression, Span, Tagging
from research.transforms import distill


def test_soften_equals_softmax_of_scaled_logits():
  logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
  probs = np.asarray(jax.nn.softmax(logits, -1))
  for temperature in (0.5, 1.0, 4.0):
    np.testing.assert_allclose(distill.soften(probs, temperature),
                               jax.nn.softmax(logits / temperature, -1), rtol=1e-5)
  with pytest.raises(ValueError, match='temperature'):
    distill.soften(probs, 0.0)


def test_teacher_targets_average_softened_probabilities_and_scores():
  a = np.array([[0.9, 0.1], [0.2, 0.8]])
  b = np.array([[0.5, 0.5], [0.4, 0.6]])
  targets = distill.teacher_targets([a, b], Classification(), 2.0)
  np.testing.assert_allclose(targets, (distill.soften(a, 2.0) + distill.soften(b, 2.0)) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  scores = distill.teacher_targets([np.array([1.0, 3.0]), np.array([2.0, 5.0])],
                                   Regression())
  np.testing.assert_allclose(scores, [1.5, 4.0])
  with pytest.raises(ValueError, match='output shape'):
    distill.teacher_targets([a, a[:1]], Classification())
  with pytest.raises(ValueError, match='tagging'):
    distill.teacher_targets([a], Tagging())


def test_soft_loss_is_zero_at_the_target_and_has_the_cross_entropy_gradient():
  rng = np.random.default_rng(0)
  teacher_logits = rng.normal(size=(4, 3)).astype(np.float32)
  student = jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32))
  weights = jnp.ones(4)
  for temperature in (1.0, 3.0):
    targets = jax.nn.softmax(teacher_logits / temperature, -1)
    at_target = distill.soft_loss(Classification(), teacher_logits, targets, weights,
                                  temperature)
    assert abs(float(at_target)) < 1e-6
    # KL and cross-entropy differ by the targets' entropy, a constant: same gradient,
    # scaled by T^2 (so the soft term's size does not depend on T).
    grad = jax.grad(distill.soft_loss, argnums=1)(Classification(), student, targets,
                                                  weights, temperature)
    ce = lambda s, t=targets, temp=temperature: temp ** 2 * optax.softmax_cross_entropy(
        s / temp, t).mean()
    np.testing.assert_allclose(grad, jax.grad(ce)(student), rtol=1e-5, atol=1e-7)


def test_soft_loss_ignores_padding_rows_and_handles_regression():
  logits = jnp.array([[3.0, -3.0], [0.0, 0.0]])
  targets = jnp.array([[0.5, 0.5], [0.5, 0.5]])
  only_second = distill.soft_loss(Classification(), logits, targets, jnp.array([0.0, 1.0]))
  assert abs(float(only_second)) < 1e-6
  mse = distill.soft_loss(Regression(), jnp.array([1.0, 2.0, 9.0]), jnp.array([2.0, 2.0, 0.0]),
                          jnp.array([1.0, 1.0, 0.0]))
  assert float(mse) == pytest.approx(0.5)
  with pytest.raises(ValueError, match='span'):
    distill.soft_loss(Span(), logits, targets, jnp.ones(2))


# -- Saved runs (and Hugging Face classifiers) as in-step teachers of intermediates --

TEACHER_ENCODER = dict(vocab_size=30522, hidden_size=32, num_layers=4, num_heads=4,
                       intermediate_size=64, max_position_embeddings=64, hidden_dropout=0.0,
                       attention_dropout=0.0)


def _random_params(model, seed):
  """Params of the init's shapes (LayerNorm scales 1, the rest N(0, 0.05^2)) without
  compiling the init."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  ids = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, ids)
  flat = traverse_util.flatten_dict(nn.meta.unbox(shapes['params']), sep='/')
  rng = np.random.default_rng(seed)
  return traverse_util.unflatten_dict(
      {k: np.ones(v.shape, np.float32) if k.endswith('norm/scale') else
       (0.05 * rng.normal(size=v.shape)).astype(np.float32) for k, v in flat.items()}, sep='/')


@pytest.fixture(scope='module')
def distill_runs(tmp_path_factory, minilm_folder):
  """A 4-layer teacher run (32 wide) and a 2-layer, 16-wide student run made from it."""
  from research.checkpoints import load_tokenizer  # pylint: disable=g-import-not-at-top
  from research.models import EncoderConfig  # pylint: disable=g-import-not-at-top
  from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
  from research.testing import write_synthetic_data  # pylint: disable=g-import-not-at-top
  from research.train import saved_runs  # pylint: disable=g-import-not-at-top
  from research.train.defaults import trainer_defaults  # pylint: disable=g-import-not-at-top
  from research.transforms import student_init  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('distill_runs')
  data = write_synthetic_data(root / 'data', sst2=64)
  config = trainer_defaults()
  config.model, config.task, config.data_dir = str(minilm_folder), 'sst2', data['glue']
  config.train_examples, config.eval_examples = 32, 16
  config.batch_size, config.eval_batch_size = 8, 16
  config.max_length, config.pad_multiple, config.bucket_batches = 32, 32, 2
  config.num_epochs, config.total_steps = 0, 4
  config.log_every, config.eval_every, config.checkpoint_every = 1, 4, 2
  config.optimizer.learning_rate, config.optimizer.warmup_ratio = 3e-3, 0.0
  config.dropout = 0.0
  tokenizer = load_tokenizer(str(minilm_folder))
  teacher = TaskModel(EncoderConfig(**TEACHER_ENCODER),
                      Classification(num_labels=2, pooling='pooler', head_dropout=0.0))
  params = _random_params(teacher, 0)
  saved_runs.write_run(str(root / 'teacher'), teacher, params, config=config,
                       tokenizer=tokenizer)
  encoder, small = student_init.select_layers(teacher.encoder, params, [1, 3])
  encoder, small = student_init.truncate_width(encoder, small, hidden_size=16)
  saved_runs.write_run(str(root / 'student'), teacher.clone(encoder=encoder), small,
                       config=config, tokenizer=tokenizer)
  return root, config, teacher, params, tokenizer


def test_intermediate_distillation_in_the_trainer(distill_runs):
  """Hidden + attention + relation terms from a saved 4-layer teacher into a 2-layer,
  16-wide student made by select_layers + truncate_width: losses finite and falling,
  the projections trained, checkpointed and resumed, and not in the student's params."""
  import shutil  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from research.train import saved_runs, trainer  # pylint: disable=g-import-not-at-top
  from research.train.metric_writer import read_metrics  # pylint: disable=g-import-not-at-top
  root, base, _, _, _ = distill_runs
  config = base.copy_and_resolve_references()
  config.init_from = str(root / 'student')
  config.distill.teachers, config.distill.mode = str(root / 'teacher'), 'in_step'
  config.distill.hidden_weight = config.distill.attention_weight = 1.0
  config.distill.relation_weight, config.distill.relation_heads = 1.0, 2
  workdir = root / 'distilled'
  result = trainer.train_and_evaluate(config, workdir)
  logs = read_metrics(workdir, 'train')
  assert [r['step'] for r in logs] == [1, 2, 3, 4]
  for r in logs:
    assert all(np.isfinite(r[k]) for k in ('loss', 'hidden_loss', 'attention_loss',
                                           'relation_loss'))
    assert r['aux_grad_norm'] > 0
    assert r['loss'] == pytest.approx(0.5 * r['task_loss'] + 0.5 * r['distill_loss'] +
                                      r['hidden_loss'] + r['attention_loss'] +
                                      r['relation_loss'], rel=1e-5)
  assert logs[-1]['hidden_loss'] < logs[0]['hidden_loss']
  assert set(result['params']) == {'encoder', 'head'}  # the student alone

  def state(step):
    manager = ocp.CheckpointManager(str(workdir / 'checkpoints'),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
      return manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))['state']
    finally:
      manager.close()
  saved = state(4)
  projection = saved['aux']['hidden_loss']['teacher_0']['layers']
  assert projection.shape == (16, 32)
  assert float(np.abs(projection - state(2)['aux']['hidden_loss']['teacher_0']['layers']).max()) > 0
  assert set(saved_runs.restore_params(str(workdir), 'best')[0]) == {'encoder', 'head'}
  # Resumed from step 2, the run ends where it did: student and projections.
  shutil.rmtree(workdir / 'checkpoints' / '4')
  resumed = trainer.train_and_evaluate(config, workdir)
  for a, b in zip(jax.tree.leaves(result['params']), jax.tree.leaves(resumed['params'])):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(state(4)['aux']['hidden_loss']['teacher_0']['layers'], projection,
                             atol=1e-6)


def test_intermediate_distillation_config_errors(distill_runs):
  from research.models import EncoderConfig  # pylint: disable=g-import-not-at-top
  from research.train import distillation, trainer  # pylint: disable=g-import-not-at-top
  from research.train.step import TaskLoss  # pylint: disable=g-import-not-at-top
  from research.transforms.technique import Setup  # pylint: disable=g-import-not-at-top
  _, base, _, _, _ = distill_runs
  config = base.copy_and_resolve_references()
  config.distill.hidden_weight = 1.0
  with pytest.raises(ValueError, match='hidden_weight > 0 needs config.distill.teachers'):
    trainer.check_config(config)
  config.distill.teachers = 'runs/t'
  with pytest.raises(ValueError, match="mode='in_step'"):
    trainer.check_config(config)
  config.distill.mode, config.distill.attention_weight = 'in_step', -1.0
  with pytest.raises(ValueError, match='attention_weight must be >= 0'):
    trainer.check_config(config)
  config.distill.attention_weight, config.distill.layer_map = 1.0, '0,7'
  teacher, student = EncoderConfig(**TEACHER_ENCODER), EncoderConfig(
      **{**TEACHER_ENCODER, 'num_layers': 2})
  setup = Setup(None, Classification(), None, student, [], '')
  terms = lambda: distillation.TECHNIQUE.loss_terms(
      config, setup, [TaskLoss(Classification())], [teacher])
  with pytest.raises(ValueError, match=r'teacher layer\(s\) \[7\]'):
    terms()
  config.distill.layer_map = 'uniform'
  names = [t.name for t in terms()]
  assert names == ['task_loss', 'distill_loss', 'hidden_loss', 'attention_loss']


def test_teachers_must_share_task_and_tokenizer_and_may_be_hf_classifiers(distill_runs):
  import transformers  # pylint: disable=g-import-not-at-top
  from research.checkpoints import hf_heads  # pylint: disable=g-import-not-at-top
  from research.data import tasks  # pylint: disable=g-import-not-at-top
  from research.train import teachers  # pylint: disable=g-import-not-at-top
  root, config, teacher, params, tokenizer = distill_runs
  sst2 = tasks.get_task('sst2')
  with pytest.raises(ValueError, match='trained on sst2, the student on mrpc'):
    teachers.load_teacher(str(root / 'teacher'), 'best', tasks.get_task('mrpc'), tokenizer)
  vocab = root / 'vocab.txt'
  vocab.write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'good', 'bad']))
  other = transformers.BertTokenizerFast(vocab_file=str(vocab))
  with pytest.raises(ValueError, match='another tokenizer'):
    teachers.load_teacher(str(root / 'teacher'), 'best', sst2, other)

  # A Hugging Face classifier whose labels are in the other order is reordered to the task's.
  hf_heads.export_task_model(teacher, params, root / 'hf', sst2.label_names[::-1],
                             tokenizer_from=config.model)
  config = config.copy_and_resolve_references()
  config.distill.teachers = f' {root / "teacher"}, hf:{root / "hf"} '
  assert teachers.teacher_folders(config) == [str(root / 'teacher'), f'hf:{root / "hf"}']
  run = teachers.load_teacher(f'hf:{root / "hf"}', 'best', sst2, tokenizer)
  ids = jnp.asarray(np.random.default_rng(0).integers(1000, 2000, (2, 7)), jnp.int32)
  mask = jnp.ones_like(ids)
  ours = teacher.apply({'params': params}, ids, mask)[0]
  # The folder calls output 0 'positive': reordered, the teacher's output 1 comes first.
  np.testing.assert_allclose(run.model.apply({'params': run.params}, ids, mask)[0],
                             ours[:, ::-1], atol=1e-5)
  with pytest.raises(ValueError, match='another tokenizer'):
    teachers.load_teacher(f'hf:{root / "hf"}', 'best', sst2, other)
  with pytest.raises(ValueError, match='is a classification model'):
    teachers.load_teacher(f'hf:{root / "hf"}', 'best', tasks.get_task('conll2003'), tokenizer)
