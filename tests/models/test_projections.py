"""The seams of the encoder: projections that own their kernels, the injected product,
and the block generalisations (sharing maps, pre-LN, causal mask, tied `attend`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research.models import Encoder, EncoderConfig, init_params, products
from research.models.heads import TaskModel
from research.objectives import Classification

TINY = dict(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24,
            max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)


def _times(factor):
  return lambda spec, a, b, **kw: factor * products.default(spec, a, b, **kw)


products.register('test_times2', lambda arg: _times(2.0))
products.register('test_times', lambda arg: _times(float(arg)))


@pytest.fixture
def ids():
  return jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 7)), jnp.int32)


def flat(params):
  return traverse_util.flatten_dict(params, sep='/')


def unflat(tree):
  return traverse_util.unflatten_dict(tree, sep='/')


def apply(config, params, ids, **kwargs):
  return Encoder(config).apply({'params': params}, ids, **kwargs)


def test_every_product_site_is_listed_and_rules_pick_the_first_match(ids):
  config = EncoderConfig(**TINY, products=(('layer_1/mlp/.*', 'test_times2'),))
  with products.recording() as sites:
    jax.eval_shape(Encoder(config).init, jax.random.PRNGKey(0), ids)
  found = dict(sites)
  for i in range(2):
    for name in ('query', 'key', 'value', 'out', 'scores', 'context'):
      assert f'layer_{i}/attention/{name}' in found
    for name in ('intermediate', 'output'):
      assert found[f'layer_{i}/mlp/{name}'] == ('test_times2' if i == 1 else 'default')
  assert found['pooler'] == 'default'
  assert products.spec_at((('a.*', 'x'), ('.*', 'y')), 'abc') == 'x'
  assert products.spec_at((('b', 'x'),), 'abc') == 'default'  # full match only


def test_swapped_product_changes_only_the_products_it_targets(ids):
  """Doubling the FFN-out product of layer 1 equals doubling that kernel and bias."""
  base = EncoderConfig(**TINY)
  params = init_params(base, jax.random.PRNGKey(0))
  swapped = base.replace(products=(('layer_1/mlp/output', 'test_times2'),))
  changed = flat(params)
  for name in ('kernel', 'bias'):
    changed[f'layer_1/mlp/output/{name}'] = 2 * changed[f'layer_1/mlp/output/{name}']
  got, got_inter = apply(swapped, params, ids)
  want, want_inter = apply(base, unflat(changed), ids)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Layer 0 and the embeddings are untouched.
  ref, ref_inter = apply(base, params, ids)
  for i in (0, 1):
    np.testing.assert_array_equal(got_inter['hidden_states'][i], ref_inter['hidden_states'][i])
  assert np.abs(np.asarray(got) - np.asarray(ref)).max() > 1e-3


@pytest.mark.parametrize('fuse_qkv', [True, False])
def test_attention_score_product_is_its_own_site(ids, fuse_qkv):
  """Scaling layer 0's score product by c equals scaling its query kernel and bias by c."""
  base = EncoderConfig(**TINY, fuse_qkv=fuse_qkv)
  params = init_params(base, jax.random.PRNGKey(1))
  swapped = base.replace(products=(('layer_0/attention/scores', 'test_times:3.0'),))
  changed = flat(params)
  for name in ('kernel', 'bias'):
    changed[f'layer_0/attention/query/{name}'] = 3.0 * changed[f'layer_0/attention/query/{name}']
  got, _ = apply(swapped, params, ids)
  want, _ = apply(base, unflat(changed), ids)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_fused_and_separate_qkv_agree(ids):
  params = init_params(EncoderConfig(**TINY), jax.random.PRNGKey(2))
  fused, _ = apply(EncoderConfig(**TINY), params, ids)
  separate, _ = apply(EncoderConfig(**TINY, fuse_qkv=False), params, ids)
  np.testing.assert_allclose(fused, separate, atol=1e-5)


def _factorise(kernel, n_in):
  """SVD factors a [in..., r], b [r, out...] of a kernel with n_in input axes, r full."""
  shape = kernel.shape
  matrix = np.asarray(kernel, np.float64).reshape(int(np.prod(shape[:n_in])), -1)
  u, s, vt = np.linalg.svd(matrix, full_matrices=False)
  r = len(s)
  return ((u * s).reshape(*shape[:n_in], r).astype(np.float32),
          vt.reshape(r, *shape[n_in:]).astype(np.float32))


def test_full_rank_factorised_projections_reproduce_the_dense_output(ids):
  base = EncoderConfig(**TINY)
  params = init_params(base, jax.random.PRNGKey(3))
  # FFN in [16, 24] (rank 16), attention out [4, 4, 16] (rank 16), query [16, 4, 4].
  rules = (('layer_0/mlp/intermediate', 'low_rank:16'), ('layer_1/attention/out', 'low_rank:16'),
           ('layer_1/attention/query', 'low_rank:16'))
  low = base.replace(projections=rules)
  tree = flat(params)
  for site, n_in in (('layer_0/mlp/intermediate', 1), ('layer_1/attention/out', 2),
                     ('layer_1/attention/query', 1)):
    a, b = _factorise(tree.pop(f'{site}/kernel'), n_in)
    tree[f'{site}/a'], tree[f'{site}/b'] = a, b
  shapes = jax.eval_shape(lambda: init_params(low, jax.random.PRNGKey(0)))
  assert {k: v.shape for k, v in flat(shapes).items()} == {k: v.shape for k, v in tree.items()}
  got, _ = apply(low, unflat(tree), ids)
  want, _ = apply(base, params, ids)
  np.testing.assert_allclose(got, want, atol=1e-4)
  with pytest.raises(ValueError, match='rank 99'):
    init_params(base.replace(projections=(('.*/mlp/output', 'low_rank:99'),)),
                jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='unknown projection kind'):
    init_params(base.replace(projections=(('.*', 'sparse'),)), jax.random.PRNGKey(0))


def test_qwix_sees_each_projection_kernel_as_a_weight(ids):
  """qwix (Google's JAX quantization library) quantizes exactly the projection kernels.

  qwix treats an operand as a weight only when it is a param of the module running the
  product; each projection holds its kernel and multiplies in its own module, so every
  kernel is quantized to int8 and nothing else is (attention products have no weight
  operand; LayerNorm and embeddings run no product). With `fuse_qkv` the Q, K and V
  kernels are concatenated before one product in the attention module, so qwix sees
  an activation there: turn fusion off for it.
  """
  qwix = pytest.importorskip('qwix')
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  rules = [qwix.QuantizationRule(module_path='.*', weight_qtype=jnp.int8)]
  for fuse in (False, True):
    config = EncoderConfig(**TINY, fuse_qkv=fuse)
    ptq = qwix.quantize_model(Encoder(config), qwix.PtqProvider(rules))
    abstract = nn.meta.unbox(jax.eval_shape(ptq.init, jax.random.PRNGKey(0), ids)['params'])
    quantized = {k for k, v in flat(abstract).items() if type(v).__name__ == 'WithAux'}
    projections = {f'layer_{i}/{p}/kernel' for i in range(2) for p in (
        'attention/query', 'attention/key', 'attention/value', 'attention/out',
        'mlp/intermediate', 'mlp/output')} | {'pooler/kernel'}
    qkv = {k for k in projections if k.split('/')[-2] in ('query', 'key', 'value')}
    assert quantized == (projections if not fuse else projections - qkv), fuse
  # And the int8 model runs: weights stored as int8 with per-channel scales.
  config = EncoderConfig(**TINY, fuse_qkv=False)
  ptq = qwix.quantize_model(Encoder(config), qwix.PtqProvider(rules))
  params = init_params(config, jax.random.PRNGKey(0))
  abstract = nn.meta.unbox(jax.eval_shape(ptq.init, jax.random.PRNGKey(0), ids)['params'])
  quantized = qwix.quantize_params(params, abstract)
  assert quantized['layer_0']['mlp']['output']['kernel'].array.qvalue.dtype == jnp.int8
  out_q, _ = ptq.apply({'params': quantized}, ids)
  out, _ = apply(config, params, ids)
  np.testing.assert_allclose(out_q, out, atol=5e-3)


def test_sharing_maps_generalise_albert_sharing(ids):
  """Attention-only sharing: one attention block, per-layer FFNs; whole-layer sharing."""
  config = EncoderConfig(**{**TINY, 'num_layers': 3}, attention_map=(0, 0, 0))
  params = init_params(config, jax.random.PRNGKey(0))
  assert set(params['layer_0']) == {'attention', 'attention_norm', 'mlp', 'output_norm'}
  assert set(params['layer_1']) == set(params['layer_2']) == {'mlp', 'output_norm'}
  assert config.parameter_sets == 3
  # It equals the unshared model whose three attention blocks are copies of layer 0's.
  unshared = EncoderConfig(**{**TINY, 'num_layers': 3})
  copies = {k: dict(v) for k, v in params.items()}
  for i in (1, 2):
    copies[f'layer_{i}'].update(attention=params['layer_0']['attention'],
                                attention_norm=params['layer_0']['attention_norm'])
  np.testing.assert_allclose(apply(config, params, ids)[0], apply(unshared, copies, ids)[0],
                             atol=1e-6)
  grouped = EncoderConfig(**{**TINY, 'num_layers': 4}).shared(groups=2)
  assert grouped.attention_map == grouped.ffn_map == (0, 0, 1, 1)
  assert set(init_params(grouped, jax.random.PRNGKey(0))) == {'embeddings', 'layer_0',
                                                              'layer_1', 'pooler'}
  with pytest.raises(ValueError, match='different sizes'):
    EncoderConfig(**{**TINY, 'intermediate_size': (8, 16)}, ffn_map=(0, 0))
  with pytest.raises(ValueError, match='ffn_map needs 2 entries'):
    EncoderConfig(**TINY, ffn_map=(0,))


def test_pre_layernorm_and_causal_mask(ids):
  config = EncoderConfig(**TINY, norm_position='pre', causal=True, embedding_norm=False,
                         use_pooler=False)
  params = init_params(config, jax.random.PRNGKey(0))
  assert 'final_norm' in params and 'layer_norm' not in params['embeddings']
  out, inter = apply(config, params, ids, output_attentions=True)
  probs = np.asarray(inter['attentions'][0])
  assert np.abs(np.triu(probs, k=1)).max() < 1e-12  # no attention to later tokens
  # Causal: a token's output does not depend on later tokens.
  changed = ids.at[:, 5:].set(3)
  out2, _ = apply(config, params, changed)
  np.testing.assert_allclose(out[:, :5], out2[:, :5], atol=1e-6)
  assert np.abs(np.asarray(out[:, 5:]) - np.asarray(out2[:, 5:])).max() > 1e-4
  # Pre-LN by hand for one layer: x + attn(LN(x)), then + ffn(LN(.)), then the final norm.
  assert np.allclose(np.asarray(out).mean(-1), 0.0, atol=1e-5)  # final LayerNorm output


def test_attend_is_the_tied_output_product(ids):
  config = EncoderConfig(**TINY)
  params = init_params(config, jax.random.PRNGKey(0))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 16)), jnp.float32)
  logits = Encoder(config).apply({'params': params}, x, method=Encoder.attend)
  np.testing.assert_allclose(
      logits, np.asarray(x) @ np.asarray(params['embeddings']['word_embeddings']['embedding']).T,
      atol=1e-5)


def test_queries_keys_and_values_are_intermediates(ids):
  config = EncoderConfig(**TINY)
  params = init_params(config, jax.random.PRNGKey(0))
  _, inter = apply(config, params, ids, output_qkv=True, output_attentions=True)
  q, k, v = inter['queries'][1], inter['keys'][1], inter['values'][1]
  assert q.shape == k.shape == v.shape == (2, 4, 7, 4)
  probs = jax.nn.softmax(np.einsum('bhqd,bhkd->bhqk', q, k) / 2.0, -1)
  np.testing.assert_allclose(probs, inter['attentions'][1], atol=1e-5)


def test_task_model_head_projections_follow_the_rules(ids):
  config = EncoderConfig(**TINY, products=(('head/out', 'test_times2'),))
  model = TaskModel(config, Classification(num_labels=3, head_dropout=0.0))
  params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))['params']
  doubled, _ = model.apply({'params': params}, ids, jnp.ones_like(ids))
  plain, _ = TaskModel(config.replace(products=()), model.objective).apply(
      {'params': params}, ids, jnp.ones_like(ids))
  np.testing.assert_allclose(doubled, 2 * np.asarray(plain), rtol=1e-5, atol=1e-6)
