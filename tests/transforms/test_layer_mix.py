"""Tests for research.transforms.layer_mix (tolerances: float32, atol 1e-5)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.transforms import layer_mix as lm

L, B, S, H = 3, 2, 5, 8  # layers, batch, seq, hidden


def hidden_states(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), L + 1)
  # Distinct offsets make every layer distinguishable.
  return tuple(jax.random.normal(k, (B, S, H)) + 10.0 * i for i, k in enumerate(keys))


def test_selection_functions_pick_the_right_state():
  hs = hidden_states()
  assert lm.static_embeddings(hs) is hs[0]
  assert lm.top_layer(hs) is hs[L]
  assert lm.select_layer(-2)(hs) is hs[L - 1]
  assert lm.select_layer(1)(hs) is hs[1]
  with pytest.raises(ValueError, match=r'layer index 4 is out of range .* -4\.\.3'):
    lm.select_layer(L + 1)(hs)
  with pytest.raises(ValueError, match='out of range'):
    lm.select_layer(-(L + 2))(hs)


def test_concat_last_k():
  hs = hidden_states()
  out = lm.concat_last_k(2)(hs)
  assert out.shape == (B, S, 2 * H)
  np.testing.assert_array_equal(out[..., :H], hs[L - 1])
  np.testing.assert_array_equal(out[..., H:], hs[L])
  assert lm.concat_last_k(L + 1)(hs).shape == (B, S, (L + 1) * H)
  with pytest.raises(ValueError, match='k=5 must be in 1..4'):
    lm.concat_last_k(L + 2)(hs)


def test_scalar_mix_params_and_uniform_init():
  hs = hidden_states()
  mix = lm.ScalarMix()
  variables = mix.init(jax.random.PRNGKey(0), hs)
  params = variables['params']
  assert set(params) == {'weights', 'gamma'}
  assert params['weights'].shape == (L + 1,) and params['gamma'].shape == ()
  np.testing.assert_array_equal(params['weights'], np.zeros(L + 1))
  assert float(params['gamma']) == 1.0
  out = mix.apply(variables, hs)
  np.testing.assert_allclose(out, sum(hs) / (L + 1), atol=1e-5)


def test_scalar_mix_formula_and_gradient():
  hs = hidden_states()
  w = jnp.array([0.5, -1.0, 2.0, 0.0])
  gamma = jnp.array(0.7)
  out = lm.ScalarMix().apply({'params': {'weights': w, 'gamma': gamma}}, hs)
  p = np.exp(w) / np.exp(w).sum()
  expected = 0.7 * sum(pj * np.asarray(h) for pj, h in zip(p, hs))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  grad = jax.grad(lambda w: lm.scalar_mix(w, gamma, hs).sum())(w)
  assert np.all(np.abs(grad) > 0)  # every layer's weight receives gradient


def test_layer_norm_ignores_padding():
  hs = hidden_states()
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
  # Garbage at padding positions must not change the output at real tokens.
  pad = (1 - mask)[..., None] * 1e4
  hs_garbage = tuple(h + pad for h in hs)
  one_hot = jnp.zeros(L + 1).at[2].set(10.0)  # ~all weight on layer 2
  out_a = lm.scalar_mix(jnp.zeros(L + 1), 1.0, hs, mask, do_layer_norm=True)
  out_b = lm.scalar_mix(jnp.zeros(L + 1), 1.0, hs_garbage, mask, do_layer_norm=True)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(out_a)[real], np.asarray(out_b)[real],
                             rtol=1e-4, atol=1e-4)
  # A layer normalised alone has mean 0 / variance 1 over real tokens.
  single = lm.scalar_mix(jnp.full(L + 1, -1e9).at[2].set(0.0), 1.0, hs_garbage,
                         mask, do_layer_norm=True)
  vals = np.asarray(single)[real]
  assert abs(vals.mean()) < 1e-4 and abs(vals.var() - 1.0) < 1e-3
  # Without layer norm the offset of layer 2 (mean ~20) survives.
  raw = lm.scalar_mix(one_hot, 1.0, hs, mask)
  assert np.asarray(raw)[real].mean() > 15.0


@pytest.mark.parametrize('spec,width,n_params', [
    ('embeddings', H, 0), ('top', H, 0), ('layer:-2', H, 0), ('last:4', 4 * H, 0),
    ('scalar_mix', H, 2), ('scalar_mix_norm', H, 2)])
def test_make_layer_mix_specs(spec, width, n_params):
  hs = hidden_states()
  mask = jnp.ones((B, S))
  mix = lm.make_layer_mix(spec, num_layers=L)
  variables = mix.init(jax.random.PRNGKey(0), hs, mask)
  out = jax.jit(mix.apply)(variables, hs, mask)
  assert out.shape == (B, S, width)
  assert len(jax.tree.leaves(variables)) == n_params
  if spec == 'embeddings':
    np.testing.assert_array_equal(out, hs[0])
  if spec == 'layer:-2':
    np.testing.assert_array_equal(out, hs[L - 1])


def test_make_layer_mix_errors():
  with pytest.raises(ValueError, match=r"Unknown layer mix spec 'mean'.*scalar_mix_norm"):
    lm.make_layer_mix('mean')
  with pytest.raises(ValueError, match='layer index 7 is out of range'):
    lm.make_layer_mix('layer:7', num_layers=L)
  with pytest.raises(ValueError, match="'x' is not an integer"):
    lm.make_layer_mix('layer:x')
  with pytest.raises(ValueError, match='k=0'):
    lm.make_layer_mix('last:0')
  with pytest.raises(ValueError, match='k=9 must be in 1..4'):
    lm.make_layer_mix('last:9', num_layers=L)
  # Without num_layers, range is checked at call time.
  mix = lm.make_layer_mix('layer:7')
  with pytest.raises(ValueError, match='out of range'):
    mix.init(jax.random.PRNGKey(0), hidden_states())


class _TinyTask(nn.Module):
  spec: str

  @nn.compact
  def __call__(self, hs, mask=None):
    x = lm.make_layer_mix(self.spec, name='layer_mix')(hs, mask)
    return nn.Dense(2, name='head')(x[:, 0])


def test_params_live_under_layer_mix_and_mix_weights():
  hs = hidden_states()
  params = _TinyTask('scalar_mix').init(jax.random.PRNGKey(0), hs)['params']
  assert set(params) == {'layer_mix', 'head'}
  assert params['layer_mix']['weights'].shape == (L + 1,)
  np.testing.assert_allclose(lm.mix_weights(params), np.full(L + 1, 0.25), atol=1e-7)
  params['layer_mix']['weights'] = jnp.log(jnp.array([1.0, 2.0, 3.0, 4.0]))
  np.testing.assert_allclose(lm.mix_weights({'params': params}),
                             [0.1, 0.2, 0.3, 0.4], atol=1e-6)
  np.testing.assert_allclose(lm.mix_weights(params['layer_mix']).sum(), 1.0, atol=1e-6)
  top = _TinyTask('top').init(jax.random.PRNGKey(0), hs)['params']
  assert set(top) == {'head'}
  with pytest.raises(ValueError, match="no scalar-mix params"):
    lm.mix_weights(top)
