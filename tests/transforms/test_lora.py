"""Tests for research.transforms.lora (float32; rtol 1e-5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.transforms import lora

H, R = 8, 2
TARGETS = r'encoder/layer_\d+/attention/(query|value)/kernel'


def params():
  rng = np.random.default_rng(0)
  arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  layer = lambda: {'attention': {n: {'kernel': arr(H, H), 'bias': arr(H)}
                                 for n in ('query', 'key', 'value')}}
  return {'encoder': {'layer_0': layer(), 'layer_1': layer()},
          'head': {'out': {'kernel': arr(H, 3), 'bias': arr(3)}}}


def test_add_lora_shapes_and_identity_at_init():
  p = params()
  base, factors = lora.add_lora(p, R, TARGETS, jax.random.PRNGKey(0))
  assert base is p
  q = factors['encoder']['layer_1']['attention']['query']['kernel']
  assert q['a'].shape == (H, R) and q['b'].shape == (R, H)
  assert set(factors['encoder']['layer_0']['attention']) == {'query', 'value'}
  assert sum(x.size for x in jax.tree.leaves(factors)) == 4 * 2 * H * R  # 4 kernels
  merged = lora.merge_lora(base, factors, alpha=4.0)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(merged)):
    np.testing.assert_array_equal(a, b)  # b == 0 -> exact identity


def test_merge_adds_scaled_low_rank_update_and_is_differentiable():
  p = params()
  _, factors = lora.add_lora(p, R, TARGETS, jax.random.PRNGKey(0))
  f = factors['encoder']['layer_0']['attention']['value']['kernel']
  f['b'] = jnp.ones((R, H))
  merged = lora.merge_lora(p, factors, alpha=4.0)
  w = p['encoder']['layer_0']['attention']['value']['kernel']
  np.testing.assert_allclose(merged['encoder']['layer_0']['attention']['value']['kernel'],
                             w + (4.0 / R) * f['a'] @ f['b'], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(merged['encoder']['layer_0']['attention']['key']['kernel'],
                                p['encoder']['layer_0']['attention']['key']['kernel'])
  loss = lambda fac: jnp.sum(lora.merge_lora(p, fac, 4.0)['encoder']['layer_0']
                             ['attention']['value']['kernel'] ** 2)
  grads = jax.grad(loss)(factors)
  assert np.any(grads['encoder']['layer_0']['attention']['value']['kernel']['a'] != 0)


def test_lora_errors():
  p = params()
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='rank must be an int >= 1'):
    lora.add_lora(p, 0, TARGETS, key)
  with pytest.raises(ValueError, match='no parameter path matches'):
    lora.add_lora(p, R, 'decoder/.*', key)
  with pytest.raises(ValueError, match='did the regex catch a bias'):
    lora.add_lora(p, R, r'.*/query/.*', key)
  with pytest.raises(ValueError, match='rank 4 exceeds'):
    lora.add_lora(p, 4, r'head/out/kernel', key)
  _, factors = lora.add_lora(p, R, TARGETS, key)
  with pytest.raises(ValueError, match='not found in base'):
    lora.merge_lora({'head': p['head']}, factors, 1.0)


def test_multi_axis_attention_kernels():
  n, d = 2, 4  # heads, head_dim; layout of research/models/encoder.py
  p = {'encoder': {'layer_0': {'attention': {
      'query': {'kernel': jnp.ones((H, n, d))}, 'out': {'kernel': jnp.ones((n, d, H))}}}}}
  _, factors = lora.add_lora(p, R, r'.*attention/(query|out)/kernel', jax.random.PRNGKey(0))
  att = factors['encoder']['layer_0']['attention']
  assert att['query']['kernel']['a'].shape == (H, R)
  assert att['query']['kernel']['b'].shape == (R, n * d)
  assert att['out']['kernel']['a'].shape == (n * d, R)  # input = heads x head_dim
  assert att['out']['kernel']['b'].shape == (R, H)
  att['out']['kernel']['b'] = jnp.ones((R, H))
  merged = lora.merge_lora(p, factors, alpha=R)['encoder']['layer_0']['attention']
  assert merged['out']['kernel'].shape == (n, d, H)
  np.testing.assert_allclose(merged['out']['kernel'].reshape(n * d, H),
                             1.0 + att['out']['kernel']['a'] @ jnp.ones((R, H)), rtol=1e-5)
  with pytest.raises(ValueError, match='num_in_axes=3 invalid'):
    lora.add_lora(p, R, r'.*query/kernel', jax.random.PRNGKey(0), num_in_axes=3)
