"""Tests for research.train.optimizers / schedules (float32; rtol 1e-5 unless said)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research.testing import bert_like_params
from research.train import optimizers as opt
from research.train import schedules
from research.transforms import freeze
from research.models.sizes import param_bytes

L, H, V = 2, 4, 10


def tiny_params(num_layers=L):
  return bert_like_params(num_layers, hidden=H, vocab=V, ffn=8, positions=6,
                          attention=('query', 'out'), head_dense=False)


def small_params():
  """A few leaves only (jit compile time grows with the leaf count)."""
  p = tiny_params(num_layers=1)
  return {'encoder': {'embeddings': {'word_embeddings': p['encoder']['embeddings']['word_embeddings']},
                      'layer_0': {'mlp': p['encoder']['layer_0']['mlp'],
                                  'output_norm': p['encoder']['layer_0']['output_norm']}},
          'layer_mix': p['layer_mix'], 'head': p['head']}


def by_path(tree):
  return dict(zip(freeze.param_paths(tree), jax.tree.leaves(tree)))


def one_update(tx, params, grads=None):
  grads = grads if grads is not None else jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return by_path(updates)


BASE = dict(learning_rate=0.1, total_steps=100, schedule='constant', clip_norm=None,
            weight_decay=0.0)


# --- schedules ---------------------------------------------------------------

@pytest.mark.parametrize('kind,mid', [('linear', 0.05), ('cosine', 0.05), ('constant', 0.1)])
def test_schedule_values(kind, mid):
  s = schedules.make_schedule(0.1, total_steps=110, warmup_steps=10, kind=kind)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60)], [0.0, 0.05, 0.1, mid], rtol=1e-5)
  np.testing.assert_allclose(s(110), 0.1 if kind == 'constant' else 0.0, atol=1e-7)


def test_warmup_ratio_equals_warmup_steps_and_errors():
  a = opt.schedule_from_config({'learning_rate': 1.0, 'total_steps': 50, 'warmup_ratio': 0.2})
  b = opt.schedule_from_config({'learning_rate': 1.0, 'total_steps': 50, 'warmup_steps': 10})
  assert [float(a(i)) for i in range(0, 60, 5)] == [float(b(i)) for i in range(0, 60, 5)]
  with pytest.raises(ValueError, match='not both'):
    schedules.resolve_warmup(10, warmup_steps=1, warmup_ratio=0.1)
  with pytest.raises(ValueError, match='warmup_ratio must be in'):
    schedules.resolve_warmup(10, warmup_ratio=1.5)
  s = schedules.make_schedule(1.0, total_steps=10, warmup_steps=10, kind='cosine')
  assert (float(s(5)), float(s(10)), float(s(11))) == (0.5, 1.0, 0.0)  # all warmup


# --- weight decay mask -------------------------------------------------------

def test_decay_mask_excludes_bias_norm_and_optionally_embeddings():
  params = tiny_params()
  mask = by_path(opt.decay_mask(params))
  assert mask['encoder/layer_0/attention/query/kernel']
  assert mask['head/out/kernel']
  assert mask['encoder/embeddings/word_embeddings/embedding']
  assert not mask['encoder/layer_0/attention/query/bias']
  assert not mask['encoder/layer_1/output_norm/scale']
  assert not mask['encoder/embeddings/layer_norm/scale']
  assert not mask['layer_mix/weights'] and not mask['layer_mix/gamma']
  no_emb = by_path(opt.decay_mask(params, decay_embeddings=False))
  assert not no_emb['encoder/embeddings/position_embeddings/embedding']
  assert no_emb['encoder/pooler/kernel']


@pytest.mark.parametrize('name', ['adamw', 'lamb'])
def test_weight_decay_only_where_masked(name):
  params = small_params()
  tx = opt.make_optimizer(dict(BASE, name=name, weight_decay=0.5))
  zeros = jax.tree.map(jnp.zeros_like, params)
  up = one_update(tx, params, zeros)
  p = by_path(params)
  k = 'encoder/layer_0/mlp/intermediate/kernel'
  if name == 'adamw':  # update = -lr * wd * w exactly
    np.testing.assert_allclose(up[k], -0.1 * 0.5 * p[k], rtol=1e-5)
  else:  # LAMB rescales to trust ratio ||w|| / ||wd * w|| -> -lr * w / 1
    np.testing.assert_allclose(up[k], -0.1 * p[k], rtol=1e-5)
  for path in ('encoder/layer_0/mlp/intermediate/bias', 'encoder/layer_0/output_norm/scale',
               'layer_mix/gamma'):
    np.testing.assert_array_equal(up[path], 0.0)


# --- layer-wise learning-rate decay -----------------------------------------

def test_layer_depths():
  depths = by_path(opt.layer_depths(tiny_params()))
  assert depths['head/out/kernel'] == 0 and depths['layer_mix/gamma'] == 0
  assert depths['encoder/pooler/bias'] == 0
  assert depths['encoder/layer_1/attention/query/kernel'] == 1
  assert depths['encoder/layer_0/attention/query/kernel'] == 2
  assert depths['encoder/embeddings/word_embeddings/embedding'] == L + 1
  with pytest.raises(ValueError, match="layer index 1 but num_layers=1"):
    opt.layer_depths(tiny_params(), num_layers=1)


def test_llrd_with_sgd_scales_by_decay_power_depth():
  params = tiny_params()
  up = one_update(optax.chain(optax.sgd(0.1), opt.layerwise_lr_decay(0.5)), params)
  np.testing.assert_allclose(up['head/out/kernel'], -0.1)
  np.testing.assert_allclose(up['encoder/layer_1/mlp/output/kernel'], -0.1 * 0.5)
  np.testing.assert_allclose(up['encoder/layer_0/mlp/output/kernel'], -0.1 * 0.25)
  ratio = up['encoder/embeddings/word_embeddings/embedding'] / up['head/out/bias'][0]
  np.testing.assert_allclose(ratio, 0.5 ** (L + 1), rtol=1e-6)


def test_llrd_in_make_optimizer_adamw():
  # First AdamW step with unit grads is -lr * g / (|g| + eps): SGD-like.
  up = one_update(opt.make_optimizer(dict(BASE, llrd=0.8, num_layers=L)), tiny_params())
  head = float(up['head/out/kernel'][0, 0])
  np.testing.assert_allclose(head, -0.1, rtol=1e-5)  # eps=1e-8, float32
  emb = up['encoder/embeddings/token_type_embeddings/embedding']
  np.testing.assert_allclose(emb / head, 0.8 ** (L + 1), rtol=1e-6)
  np.testing.assert_allclose(up['encoder/layer_1/attention/out/bias'] / head, 0.8, rtol=1e-6)



def test_llrd_one_is_off_and_a_float_default_overrides_from_flags():
  # The configs default llrd to 1.0 (not None) so `--config.optimizer.llrd=0.9` parses.
  params = tiny_params()
  off = one_update(opt.make_optimizer(dict(BASE, llrd=1.0)), params)
  none = one_update(opt.make_optimizer(dict(BASE, llrd=None)), params)
  for k in off:
    np.testing.assert_array_equal(off[k], none[k])

# --- gradual unfreezing -------------------------------------------------------

def test_gradual_unfreezing_top_down_every_n_steps():
  params = tiny_params()
  tx = optax.chain(optax.sgd(1.0), opt.gradual_unfreezing(every_n_steps=2))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  update = jax.jit(tx.update)
  moving = []
  for _ in range(7):
    updates, state = update(grads, state, params)
    moving.append({p for p, u in by_path(updates).items() if np.any(u != 0)})
  head = {'head/out/kernel', 'layer_mix/weights', 'encoder/pooler/kernel'}
  assert head <= moving[0] and not any(p.startswith('encoder/layer') for p in moving[1])
  assert any(p.startswith('encoder/layer_1/') for p in moving[2])
  assert not any(p.startswith('encoder/layer_0/') for p in moving[3])
  assert any(p.startswith('encoder/layer_0/') for p in moving[4])
  assert not any(p.startswith('encoder/embeddings/') for p in moving[5])
  assert len(moving[6]) == len(jax.tree.leaves(params))  # all unfrozen at step 6


def test_gradual_unfreezing_keeps_params_bit_identical_but_holds_state():
  params = tiny_params()
  tx = opt.make_optimizer(dict(BASE, weight_decay=0.1, unfreeze_every=5))
  state, new, update = tx.init(params), params, jax.jit(tx.update)
  for _ in range(3):
    updates, state = update(jax.tree.map(jnp.ones_like, params), state, new)
    new = optax.apply_updates(new, updates)
  enc_old, enc_new = by_path(params['encoder']), by_path(new['encoder'])
  for path in enc_old:
    if not path.startswith('pooler/'):
      assert np.array_equal(enc_old[path], enc_new[path]), path
  total = sum(x.size for x in jax.tree.leaves(params))
  assert param_bytes(state) >= 8 * total  # moments for everything


# --- clipping, accumulation, LAMB --------------------------------------------

def test_clip_by_global_norm_before_adam():
  params = small_params()
  tx = opt.make_optimizer(dict(BASE, clip_norm=1.0))
  grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  adam = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)][0]
  np.testing.assert_allclose(optax.tree.norm(adam.mu), (1 - 0.9) * 1.0, rtol=1e-5)


@pytest.mark.parametrize('scale', [100.0, 0.01])  # clipped, and left alone
def test_clip_matches_optax_and_multiplies(scale):
  params = small_params()
  grads = jax.tree.map(lambda p: scale * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape),
                       params)
  ours, _ = opt.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  ref, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
  # The point of the rewrite: no element-wise divide for XLA to materialise.
  jaxpr = jax.make_jaxpr(lambda g: opt.clip_by_global_norm(1.0).update(g, optax.EmptyState()))(grads)
  divides = [e for e in jaxpr.eqns if e.primitive.name == 'div']
  assert divides and all(v.aval.shape == () for e in divides for v in e.outvars)


def test_accumulation_equals_one_step_on_mean_grads():
  params = small_params()
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  grads = [jax.tree.map(lambda p, k=k: jax.random.normal(k, p.shape), params) for k in keys]
  tx = opt.make_optimizer(dict(BASE, accumulate_steps=3, weight_decay=0.01))
  state, p, update = jax.jit(tx.init)(params), params, jax.jit(tx.update)
  for i, g in enumerate(grads):
    updates, state = update(g, state, p)
    p = optax.apply_updates(p, updates)
    if i < 2:
      assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p)))
  mean = jax.tree.map(lambda *g: sum(g) / 3, *grads)
  single = opt.make_optimizer(dict(BASE, weight_decay=0.01))
  ref_updates, _ = jax.jit(single.update)(mean, single.init(params), params)
  ref = optax.apply_updates(params, ref_updates)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lamb_runs_and_is_finite():
  params = small_params()
  tx = opt.make_optimizer(ml_collections.ConfigDict(
      dict(name='lamb', learning_rate=1e-2, total_steps=10, warmup_steps=2, llrd=0.9)))
  up = one_update(tx, params)
  assert all(np.all(np.isfinite(u)) for u in up.values())


def test_composes_with_static_freezing_under_jit():
  params = tiny_params()
  tx = freeze.with_freezing(
      opt.make_optimizer(dict(BASE, weight_decay=0.1, llrd=0.5, clip_norm=1.0)),
      params, freeze.preset('bottom:1'))
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  up = by_path(updates)
  np.testing.assert_array_equal(up['encoder/layer_0/mlp/output/kernel'], 0.0)
  np.testing.assert_array_equal(up['encoder/embeddings/word_embeddings/embedding'], 0.0)
  ratio = up['encoder/layer_1/mlp/output/bias'] / up['head/out/bias'][0]
  np.testing.assert_allclose(ratio, 0.5, rtol=1e-5)


# --- validation -----------------------------------------------------------------

@pytest.mark.parametrize('override,match', [
    ({'learning_rate': -1.0}, 'learning_rate=-1.0'),
    ({'total_steps': 0}, 'total_steps=0'),
    ({'warmup_steps': 200}, r'warmup_steps=200 .* total_steps=100'),
    ({'accumulate_steps': 0}, 'accumulate_steps=0'),
    ({'name': 'sgd'}, r"name='sgd'.*adamw"),
    ({'schedule': 'step'}, "schedule='step'"),
    ({'llrd': 1.5}, 'llrd=1.5'),
    ({'lr': 0.1}, r"unknown field\(s\) \['lr'\]"),
    ({'learning_rate': None}, r"missing required field\(s\) \['learning_rate'\]"),
])
def test_config_validation(override, match):
  with pytest.raises(ValueError, match=match):
    opt.make_optimizer(dict(BASE, **override))


def test_layer_depths_with_shared_layers():
  """A shared parameter set is as deep as the highest layer that runs it."""
  params = tiny_params()
  # ALBERT: every application runs layer_0 (drop layer_1's params).
  shared = {**params, 'encoder': {k: v for k, v in params['encoder'].items()
                                  if k != 'layer_1'}}
  depths = by_path(opt.layer_depths(shared, num_layers=4, attention_map=(0,) * 4,
                                    ffn_map=(0,) * 4))
  assert depths['encoder/layer_0/attention/query/kernel'] == 1
  assert depths['encoder/layer_0/mlp/output/kernel'] == 1
  assert depths['encoder/embeddings/word_embeddings/embedding'] == 5
  # Attention shared by all, FFN per layer: the two blocks of layer_0 differ in depth,
  # and layer_1 holds only an FFN block.
  layer_1 = {k: v for k, v in params['encoder']['layer_1'].items()
             if k not in ('attention', 'attention_norm')}
  params = {**params, 'encoder': {**params['encoder'], 'layer_1': layer_1}}
  depths = by_path(opt.layer_depths(params, num_layers=2, attention_map=(0, 0)))
  assert depths['encoder/layer_0/attention/query/kernel'] == 1
  assert depths['encoder/layer_0/attention_norm/scale'] == 1
  assert depths['encoder/layer_0/mlp/output/kernel'] == 2
  assert depths['encoder/layer_1/output_norm/scale'] == 1
  with pytest.raises(ValueError, match='give num_layers'):
    opt.layer_depths(params, attention_map=(0, 0))
