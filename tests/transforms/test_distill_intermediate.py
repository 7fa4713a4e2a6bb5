"""Distillation of intermediates (research/transforms/distill_intermediate.py) and the
step's term-owned params: layer maps, the terms against numpy references, zero at the
teacher, no gradient to the teacher, the projections trained, and a few trainer steps."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.models import EncoderConfig
from research.models.heads import TaskModel
from research.objectives import Classification
from research.train import step as step_lib
from research.transforms import distill_intermediate as di

TEACHER = EncoderConfig(vocab_size=60, hidden_size=32, num_layers=4, num_heads=4,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0,
                        attention_dropout=0.0)
# Narrower (16 wide) with as many heads of the same width: every term applies.
STUDENT = EncoderConfig(vocab_size=60, hidden_size=16, num_layers=2, num_heads=4, head_dim=8,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout=0.0,
                        attention_dropout=0.0)


def terms():
  return [step_lib.TaskLoss(Classification(num_labels=2)), di.HiddenStateMSE('uniform'),
          di.AttentionKL('uniform'), di.MiniLMRelations('last:1', relation_heads=2)]


def random_params(model, ids, seed):
  """Params of the init's shapes without compiling the init (slow on 2 busy cores):
  LayerNorm scales 1, everything else N(0, 0.1^2) (random biases show up)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, jnp.ones_like(ids))
  flat = traverse_util.flatten_dict(nn.meta.unbox(shapes['params']), sep='/')
  rng = np.random.default_rng(seed)
  return traverse_util.unflatten_dict(
      {k: jnp.ones(v.shape) if k.endswith('norm/scale') else
       jnp.asarray(0.1 * rng.normal(size=v.shape), jnp.float32) for k, v in flat.items()},
      sep='/')


@pytest.fixture(scope='module')
def setup():
  objective = Classification(num_labels=2, head_dropout=0.0)
  teacher, student = TaskModel(TEACHER, objective), TaskModel(STUDENT, objective)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 60, (4, 8)), jnp.int32)
  mask = jnp.ones_like(ids).at[1, 5:].set(0)  # row 1 padded; row 3 a padding row
  batch = {'input_ids': ids, 'attention_mask': mask, 'labels': jnp.array([0, 1, 1, 0]),
           'weights': jnp.array([1.0, 1.0, 1.0, 0.0])}
  t_params = random_params(teacher, ids, 0)
  s_params = random_params(student, ids, 1)
  return teacher, student, t_params, s_params, batch


def test_layer_maps_follow_the_stated_conventions():
  assert di.layer_pairs('uniform', 2, 4) == ((0, 1), (1, 3))
  assert di.layer_pairs('uniform', 3, 12) == ((0, 3), (1, 7), (2, 11))
  assert di.layer_pairs('uniform', 4, 6) == ((0, 0), (1, 2), (2, 3), (3, 5))
  assert di.layer_pairs('last:2', 3, 12) == ((1, 10), (2, 11))
  assert di.layer_pairs('last', 6, 6) == ((5, 5),)
  assert di.layer_pairs('1,3', 2, 4) == ((0, 1), (1, 3))
  with pytest.raises(ValueError, match=r'teacher layer\(s\) \[4\]'):
    di.layer_pairs('1,4', 2, 4)
  with pytest.raises(ValueError, match='one entry per student layer'):
    di.layer_pairs('1,2,3', 2, 4)
  with pytest.raises(ValueError, match='no deeper'):
    di.layer_pairs('uniform', 6, 4)
  with pytest.raises(ValueError, match='k must be in 1..2'):
    di.layer_pairs('last:3', 2, 4)
  with pytest.raises(ValueError, match='uniform'):
    di.layer_pairs('every other', 2, 4)
  with pytest.raises(ValueError, match='teacher layer'):  # early, from the configs
    di.HiddenStateMSE('0,9').check(STUDENT, [TEACHER])


def test_hidden_mse_matches_numpy_and_ignores_padding():
  rng = np.random.default_rng(0)
  s_h = [rng.normal(size=(2, 3, 4)).astype(np.float32) for _ in range(3)]
  t_h = [rng.normal(size=(2, 3, 6)).astype(np.float32) for _ in range(5)]
  w_e, w_l = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
  batch = {'attention_mask': jnp.array([[1, 1, 0], [1, 0, 0]]), 'weights': jnp.ones(2)}
  term = di.HiddenStateMSE('uniform')
  value, _ = term(({}, {'hidden_states': s_h}), (({}, {'hidden_states': t_h}),), batch,
                  params={'teacher_0': {'embeddings': w_e, 'layers': w_l}})
  real = np.array([[1, 1, 0], [1, 0, 0]], bool)
  ref = [((s_h[0] @ w_e - t_h[0]) ** 2).mean(-1)[real].mean()]
  ref += [((s_h[a] @ w_l - t_h[b]) ** 2).mean(-1)[real].mean() for a, b in ((1, 2), (2, 4))]
  np.testing.assert_allclose(value, np.mean(ref), rtol=1e-5)
  # Anything at padding tokens does not count.
  t_h2 = [h.copy() for h in t_h]
  for h in t_h2:
    h[~real] = 1e3
  again, _ = term(({}, {'hidden_states': s_h}), (({}, {'hidden_states': t_h2}),), batch,
                  params={'teacher_0': {'embeddings': w_e, 'layers': w_l}})
  np.testing.assert_allclose(again, value, rtol=1e-6)
  with pytest.raises(ValueError, match='no projection'):
    term(({}, {'hidden_states': s_h}), (({}, {'hidden_states': t_h}),), batch, params={})
  # Two teachers, the second as wide as the student (no projection): the mean of both.
  same = [h + 1.0 for h in s_h[:1]] + [h + 2.0 for h in s_h[1:]] + [s_h[2]]
  both, _ = term(({}, {'hidden_states': s_h}),
                 (({}, {'hidden_states': t_h}), ({}, {'hidden_states': same})), batch,
                 params={'teacher_0': {'embeddings': w_e, 'layers': w_l}})
  # Against the second (3 layers, 'uniform': 0 <- 0, 1 <- 2): embeddings off by 1,
  # student layer 0 by 2, student layer 1 by 0.
  np.testing.assert_allclose(both, (value + (1.0 + 4.0 + 0.0) / 3) / 2, rtol=1e-5)


def test_attention_kl_and_relations_match_numpy():
  rng = np.random.default_rng(1)
  real = np.array([[1, 1, 1, 0]])
  keys_bias = np.where(real[:, None, None, :] > 0, 0.0, -np.inf)

  def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)

  def kl(t, s):  # rows over real keys, mean over heads, mean over real query rows
    rows = np.where(real[:, None, None, :] > 0, t * (np.log(np.maximum(t, 1e-30)) -
                                                    np.log(np.maximum(s, 1e-30))), 0).sum(-1)
    return rows.mean(1)[real > 0].mean()

  s_maps = [softmax(rng.normal(size=(1, 2, 4, 4)) + keys_bias) for _ in range(2)]
  t_maps = [softmax(rng.normal(size=(1, 2, 4, 4)) + keys_bias) for _ in range(2)]
  batch = {'attention_mask': jnp.asarray(real)}
  value, _ = di.AttentionKL('last:1')(({}, {'attentions': s_maps}),
                                      (({}, {'attentions': t_maps}),), batch)
  np.testing.assert_allclose(value, kl(t_maps[1], s_maps[1]), rtol=1e-5)
  with pytest.raises(ValueError, match='head counts must agree'):
    di.AttentionKL('last:1')(({}, {'attentions': s_maps}),
                             (({}, {'attentions': [m[:, :1] for m in t_maps]}),), batch)

  # Relations: 2 student heads x 4 vs 3 teacher heads x 4, split into 2 relation heads.
  def rel(x, r):
    b, h, n, d = x.shape
    x = x.transpose(0, 2, 1, 3).reshape(b, n, r, h * d // r).transpose(0, 2, 1, 3)
    return softmax(np.einsum('brqd,brkd->brqk', x, x) / np.sqrt(h * d // r) + keys_bias)

  student = {k: [rng.normal(size=(1, 2, 4, 4)).astype(np.float32)]
             for k in ('queries', 'keys', 'values')}
  teacher = {k: [rng.normal(size=(1, 3, 4, 4)).astype(np.float32)]
             for k in ('queries', 'keys', 'values')}
  value, _ = di.MiniLMRelations('last:1', relation_heads=2)(({}, student), (({}, teacher),),
                                                             batch)
  ref = np.mean([kl(rel(teacher[k][0], 2), rel(student[k][0], 2))
                 for k in ('queries', 'keys', 'values')])
  np.testing.assert_allclose(value, ref, rtol=1e-4)
  with pytest.raises(ValueError, match='does not divide'):
    di.MiniLMRelations('last:1', relation_heads=5)(({}, student), (({}, teacher),), batch)


def test_config_checks_name_the_problem():
  with pytest.raises(ValueError, match='student layer 0 has 4 heads, teacher 0 layer 1 has 2'):
    di.AttentionKL('uniform').check(STUDENT, [TEACHER.replace(num_heads=2, head_dim=16)])
  with pytest.raises(ValueError, match='relation heads must divide'):
    di.MiniLMRelations(relation_heads=3).check(STUDENT, [TEACHER])
  with pytest.raises(ValueError, match='relation_heads must be >= 0'):
    di.MiniLMRelations(relation_heads=-1)
  with pytest.raises(ValueError, match='no attention heads'):
    di.MiniLMRelations().check(STUDENT, [TEACHER.replace(num_heads=(4, 4, 4, 0))])
  with pytest.raises(ValueError, match='needs at least one in-step teacher'):
    di.HiddenStateMSE().check(STUDENT, [])
  # Same widths: no projection to learn.
  assert di.HiddenStateMSE().init(jax.random.PRNGKey(0), TEACHER, [TEACHER]) == {}


def test_zero_at_the_teacher_and_no_gradient_to_it(setup):
  teacher, student, t_params, s_params, batch = setup
  rng = jax.random.PRNGKey(0)
  same = step_lib.make_loss_fn(teacher, terms(), teachers=(teacher,))
  _, metrics = jax.jit(same)(t_params, batch, rng, (t_params,))
  for name in ('hidden_loss', 'attention_loss', 'relation_loss'):
    assert abs(float(metrics[name])) < 1e-6, (name, metrics[name])

  loss = step_lib.make_loss_fn(student, terms(), teachers=(teacher,))
  aux = step_lib.init_aux(terms(), jax.random.PRNGKey(2), STUDENT, [TEACHER])
  assert jax.tree.map(np.shape, aux) == {
      'hidden_loss': {'teacher_0': {'embeddings': (16, 32), 'layers': (16, 32)}}}
  names = ('hidden_loss', 'attention_loss', 'relation_loss')

  def values(sp, tp):
    metrics = loss(sp, batch, rng, (tp,), None, aux)[1]
    return jnp.stack([metrics[name] for name in names])

  # One Jacobian row per term: d term / d (student params, teacher params).
  d_student, d_teacher = jax.jit(jax.jacrev(values, argnums=(0, 1)))(s_params, t_params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(d_teacher))
  for row, name in enumerate(names):  # each term alone moves the student
    norm = optax.global_norm(jax.tree.map(lambda g, r=row: g[r], d_student['encoder']))
    assert float(norm) > 1e-6, (name, norm)


def test_projection_gradient_matches_finite_differences(setup):
  teacher, student, t_params, s_params, batch = setup
  rng = jax.random.PRNGKey(0)
  loss = step_lib.make_loss_fn(student, [di.HiddenStateMSE('uniform')], teachers=(teacher,))
  aux = step_lib.init_aux([di.HiddenStateMSE()], jax.random.PRNGKey(2), STUDENT, [TEACHER])
  f = jax.jit(lambda a: loss(s_params, batch, rng, (t_params,), None, a)[0])
  grad = jax.grad(f)(aux)['hidden_loss']['teacher_0']['layers']
  eps = 1e-2
  for index in [(0, 0), (3, 7), (15, 31)]:
    bump = lambda d, i=index: jax.tree.map(lambda x: x, aux) | {'hidden_loss': {'teacher_0': {
        **aux['hidden_loss']['teacher_0'],
        'layers': aux['hidden_loss']['teacher_0']['layers'].at[i].add(d)}}}
    numeric = (float(f(bump(eps))) - float(f(bump(-eps)))) / (2 * eps)
    assert numeric == pytest.approx(float(grad[index]), rel=2e-2, abs=1e-4)


def test_step_trains_the_projections_outside_the_student_params(setup):
  teacher, student, t_params, s_params, batch = setup
  tx, aux_tx = optax.sgd(0.1), optax.sgd(0.1)
  aux = step_lib.init_aux(terms(), jax.random.PRNGKey(2), STUDENT, [TEACHER])
  state = step_lib.init_state(s_params, tx, 0, aux=aux, aux_tx=aux_tx)
  assert set(state) == {'step', 'params', 'opt_state', 'rng', 'aux', 'aux_opt_state'}
  assert set(state['params']) == set(s_params)  # the projections are not the student's
  results = []
  for k in (1, 2):  # accumulation over micro-batches gives the same update
    step = jax.jit(step_lib.make_train_step(student, tx, terms(), teachers=(teacher,),
                                            aux_tx=aux_tx, accumulate_steps=k))
    new, metrics = step(state, {**batch, 'weights': jnp.ones(4)}, (t_params,))
    results.append((new, metrics))
  new, metrics = results[0]
  assert float(metrics['aux_grad_norm']) > 0
  moved = new['aux']['hidden_loss']['teacher_0']['layers'] - aux['hidden_loss']['teacher_0']['layers']
  assert float(jnp.abs(moved).max()) > 0
  np.testing.assert_allclose(results[1][1]['loss'], metrics['loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results[0][0]['aux']), jax.tree.leaves(results[1][0]['aux'])):
    np.testing.assert_allclose(a, b, atol=1e-6)
  with pytest.raises(ValueError, match='aux_tx'):
    step_lib.init_state(s_params, tx, 0, aux=aux)
