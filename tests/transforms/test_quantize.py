"""Fake quantization (STE) and QAT through the product seam (research/transforms/qat.py, quantize.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import Encoder, EncoderConfig, init_params, products, projections
from research.transforms import qat, quantize

CONFIG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0,
                       attention_dropout=0.0)


def test_symmetric_grid_error_and_straight_through_gradient():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
  for bits in (8, 4, 2):
    q = qat.fake_quant(x, bits)
    step = float(jnp.abs(x).max()) / (2 ** (bits - 1) - 1)
    assert float(jnp.abs(q - x).max()) <= step / 2 + 1e-6  # round to nearest level
    assert len(np.unique(np.asarray(q))) <= 2 ** bits - 1
  grad = jax.grad(lambda v: (qat.fake_quant(v, 4) * jnp.arange(8.0)).sum())(x)
  np.testing.assert_array_equal(grad, jnp.broadcast_to(jnp.arange(8.0), x.shape))


def test_per_channel_scales_and_asymmetric_grids():
  # Column 1 is 1000x larger: one scale per column keeps column 0 precise.
  x = jnp.stack([jnp.linspace(-1, 1, 11), 1000 * jnp.linspace(-1, 1, 11)], 1)
  per_tensor = qat.fake_quant(x, 8)
  per_channel = qat.fake_quant(x, 8, axes=(0,))
  assert float(jnp.abs(per_channel[:, 0] - x[:, 0]).max()) < 1e-2
  assert float(jnp.abs(per_tensor[:, 0] - x[:, 0]).max()) > 0.5  # all rounded to 0
  # Asymmetric: values in [10, 11] keep 255 levels where a symmetric grid keeps ~12.
  y = jnp.linspace(10.0, 11.0, 100)
  assert float(jnp.abs(qat.fake_quant(y, 8, symmetric=False) - y).max()) < 0.5 / 255 + 1e-5
  assert float(jnp.abs(qat.fake_quant(y, 8) - y).max()) > 0.02
  with pytest.raises(ValueError, match='bits must be in 2..16'):
    qat.fake_quant(y, 1)


def test_qat_rules_quantize_projections_and_optionally_attention():
  ids = jnp.asarray(np.random.default_rng(1).integers(1, 50, (2, 9)), jnp.int32)
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  dense, _ = Encoder(CONFIG).apply({'params': params}, ids)
  outs = {}
  for spec in ('w8,a8', 'w2,a2', 'a8,token,asym'):
    config = CONFIG.replace(products=qat.qat_rules(spec))
    with products.recording() as sites:
      outs[spec], _ = Encoder(config).apply({'params': params}, ids)
    used = dict(sites)
    assert used['layer_0/mlp/intermediate'] == f'fake_quant:{spec}'
    assert used['layer_0/attention/scores'] == 'default'
  cosine = lambda a, b: float(np.mean((np.asarray(a) * np.asarray(b)).sum(-1) / np.linalg.norm(
      a, axis=-1) / np.linalg.norm(b, axis=-1)))
  assert cosine(outs['w8,a8'], dense) > 0.999
  assert cosine(outs['w2,a2'], dense) < cosine(outs['w8,a8'], dense)
  config = CONFIG.replace(products=qat.qat_rules('w8,a8', attention=True))
  with products.recording() as sites:
    Encoder(config).apply({'params': params}, ids)
  assert dict(sites)['layer_1/attention/context'] == 'fake_quant_act:w8,a8'
  with pytest.raises(ValueError, match="unknown part 'x8'"):
    qat.qat_rules('w8,x8')


def _batches(n=3, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    ids = jnp.asarray(rng.integers(1, 50, (4, 12)), jnp.int32)
    yield {'input_ids': ids, 'attention_mask': jnp.ones_like(ids)}


def test_calibration_statistics_of_every_projection_input():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  stats = quantize.calibrate(Encoder(CONFIG), params, _batches())
  assert len(stats) == 2 * 6
  for site in ('layer_0/attention/query', 'layer_1/mlp/output'):
    s = stats[site]
    assert 0 < s['percentile'] <= s['max'] and 0.2 * s['max'] - 1e-6 <= s['mse'] <= s['max']
  # Q, K and V read the same input.
  assert stats['layer_0/attention/query'] == stats['layer_0/attention/value']


def test_ptq_of_a_qat_model_drops_its_fake_quant_projection_products():
  # The QAT run's model carries fake-quant product rules; after PTQ the int8 kernels do
  # that quantization for real, and the rules must not wrap the integer products.
  qat_config = CONFIG.replace(products=qat.qat_rules('w8,a8', attention=True))
  params = init_params(qat_config, jax.random.PRNGKey(0))
  stats = quantize.calibrate(Encoder(qat_config), params, _batches())
  config, qparams = quantize.ptq(qat_config, params, stats, 'max')
  assert not [r for r in config.products if r[1].startswith('fake_quant:')]
  assert [r for r in config.products if r[1].startswith('fake_quant_act:')]  # attention
  plain, _ = quantize.ptq(CONFIG.replace(products=tuple(
      r for r in qat_config.products if not r[1].startswith('fake_quant:'))), params, stats, 'max')
  ids = next(_batches(1, seed=5))['input_ids']
  np.testing.assert_array_equal(Encoder(config).apply({'params': qparams}, ids)[0],
                                Encoder(plain).apply({'params': qparams}, ids)[0])


@pytest.mark.parametrize('method', ['max', 'percentile', 'mse'])
def test_int8_path_matches_its_fake_quantized_reference(method):
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  ids = next(_batches(1, seed=5))['input_ids']
  stats = quantize.calibrate(Encoder(CONFIG), params, _batches())
  config, qparams = quantize.ptq(CONFIG, params, stats, method)
  assert qparams['layer_0']['mlp']['output']['qkernel'].dtype == np.int8
  assert 'kernel' not in qparams['layer_0']['mlp']['output']
  integer, _ = Encoder(config).apply({'params': qparams}, ids)
  simulated_config = config.replace(projections=tuple(
      (site, 'int8:simulate') for site, _ in config.projections))
  simulated, _ = Encoder(simulated_config).apply({'params': qparams}, ids)
  # int32 accumulation is exact; the float reference rounds: equal to float32 precision.
  np.testing.assert_allclose(integer, simulated, atol=1e-4)
  # Q, K and V share one input scale, so fusing them (input quantized once) changes nothing.
  assert config.fuse_qkv
  unfused, _ = Encoder(config.replace(fuse_qkv=False)).apply({'params': qparams}, ids)
  np.testing.assert_allclose(integer, unfused, atol=1e-5)
  # int8 x int8 products run as u8s8_dot on CPU (research/models/integer_dot.py).
  jaxpr = lambda c: str(jax.make_jaxpr(lambda p: Encoder(c).apply({'params': p}, ids))(
      qparams))
  dots = lambda c: jaxpr(c).count('dot_general') + jaxpr(c).count('u8s8_dot')
  assert dots(config.replace(fuse_qkv=False)) - dots(config) == 2 * CONFIG.num_layers
  dense, _ = Encoder(CONFIG).apply({'params': params}, ids)
  cosine = np.mean((np.asarray(integer) * np.asarray(dense)).sum(-1) / np.linalg.norm(
      integer, axis=-1) / np.linalg.norm(dense, axis=-1))
  assert cosine > 0.99


def test_int8_runs_save_int8_on_disk(tmp_path):
  from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
  from research.objectives import Classification  # pylint: disable=g-import-not-at-top
  from research.train import saved_runs  # pylint: disable=g-import-not-at-top
  model = TaskModel(CONFIG, Classification(num_labels=2))
  ids = jnp.ones((1, 8), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))['params']
  stats = quantize.calibrate(model, params, _batches())
  config, qparams = quantize.ptq(CONFIG, params, stats)
  from research.train.defaults import trainer_defaults  # pylint: disable=g-import-not-at-top
  saved_runs.write_run(str(tmp_path / 'float'), model, params, config=trainer_defaults())
  saved_runs.write_run(str(tmp_path / 'int8'), model.clone(encoder=config), qparams,
                       config=trainer_defaults())
  run = saved_runs.load_run(str(tmp_path / 'int8'))
  assert run.params['encoder']['layer_1']['attention']['key']['qkernel'].dtype == np.int8
  size = lambda d: sum(p.stat().st_size for p in (tmp_path / d / 'best').rglob('*') if p.is_file())
  # Each projection weight takes 1 byte instead of 4 (orbax's metadata is the same).
  projection_weights = 2 * (4 * 32 * 32 + 2 * 32 * 64)
  assert size('float') - size('int8') > 0.5 * 3 * projection_weights
  out, _ = run.model.apply({'params': run.params}, ids, jnp.ones_like(ids))
  assert np.isfinite(np.asarray(out)).all()


def test_int4_packs_two_values_per_byte_and_matches_its_reference():
  q = np.random.default_rng(0).integers(-8, 8, (4, 6, 3)).astype(np.int8)
  for axis in (0, 1):
    packed = quantize.pack_int4(q, axis)
    assert packed.dtype == np.int8 and packed.size == q.size // 2
    np.testing.assert_array_equal(quantize.unpack_int4(jnp.asarray(packed), axis), q)
  with pytest.raises(ValueError, match='even length'):
    quantize.pack_int4(q[:3])
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  ids = next(_batches(1, seed=5))['input_ids']
  stats = quantize.calibrate(Encoder(CONFIG), params, _batches())
  config, qparams = quantize.ptq(CONFIG, params, stats, bits=4)
  out = qparams['layer_0']['attention']['out']
  assert out['qkernel_int4'].shape == (CONFIG.num_heads, CONFIG.head_dim // 2, 32)
  integer, _ = Encoder(config).apply({'params': qparams}, ids)
  simulated_config = config.replace(projections=tuple(
      (site, 'int4:simulate') for site, _ in config.projections))
  simulated, _ = Encoder(simulated_config).apply({'params': qparams}, ids)
  np.testing.assert_allclose(integer, simulated, atol=1e-4)
  # The dense kernels it stands for: the 4-bit grid times the per-channel scales.
  dense = projections.densify(config.projections, qparams)
  kernel = np.asarray(params['layer_0']['attention']['out']['kernel'])
  got = dense['layer_0']['attention']['out']['kernel']
  assert got.shape == kernel.shape
  step = np.abs(kernel).max(axis=(0, 1)) / 7
  assert np.all(np.abs(got - kernel) <= step / 2 + 1e-6)
  with pytest.raises(ValueError, match='bits must be 4 or 8'):
    quantize.ptq(CONFIG, params, stats, bits=6)


def test_fully_quantized_bert_reaches_every_hook_site_and_trains():
  """quant_full: embedding tables, embedding output, softmax in/out, GELU in/out and
  every LayerNorm's input and output go through fake quantization."""
  from research.models import hooks  # pylint: disable=g-import-not-at-top
  seen = []
  hooks.register('seen_for_test', lambda arg: lambda x: (seen.append(arg), x)[1])
  ids = next(_batches(1, seed=3))['input_ids']
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  tagged = tuple((pattern, 'seen_for_test:' + pattern) for pattern, _ in
                 qat.full_quant_rules('w8,a8'))
  Encoder(CONFIG.replace(hooks=tagged)).apply({'params': params}, ids)
  counts = {pattern: seen.count(pattern) for pattern, _ in tagged}
  groups = qat.FULL_QUANT_GROUPS
  assert counts[qat.EMBEDDING_TABLES] == 3  # word, position, token type
  assert counts[r'(.*/)?attention/softmax_out'] == CONFIG.num_layers
  assert counts[groups['embeddings']] == 1
  assert counts[groups['softmax']] == CONFIG.num_layers
  assert counts[groups['gelu']] == 2 * CONFIG.num_layers
  assert counts[groups['layernorm']] == 4 * CONFIG.num_layers  # 2 norms, in and out
  # LayerNorms per token by default (issue 29's ablation), the rest per tensor.
  specs_by_pattern = dict(qat.full_quant_rules('w8,a8'))
  assert specs_by_pattern[groups['layernorm']] == 'fake_quant:a8,token'
  assert specs_by_pattern[groups['gelu']] == 'fake_quant:a8'
  full = CONFIG.replace(products=qat.qat_rules('w8,a8', attention=True),
                        hooks=qat.full_quant_rules('w8,a8'))
  float_out, _ = Encoder(CONFIG).apply({'params': params}, ids)
  quant_out, _ = Encoder(full).apply({'params': params}, ids)
  assert not np.allclose(float_out, quant_out, atol=1e-6)
  cosine = np.mean((np.asarray(quant_out) * np.asarray(float_out)).sum(-1) / np.linalg.norm(
      quant_out, axis=-1) / np.linalg.norm(float_out, axis=-1))
  assert cosine > 0.98
  # The straight-through estimator lets every parameter learn.
  grads = jax.grad(lambda p: jnp.sum(Encoder(full).apply({'params': p}, ids)[0] ** 2))(params)
  norms = {'/'.join(str(k.key) for k in path): float(jnp.abs(g).sum())
           for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(np.isfinite(v) for v in norms.values())
  assert norms['embeddings/word_embeddings/embedding'] > 0
  assert norms['layer_1/mlp/intermediate/kernel'] > 0
  with pytest.raises(ValueError, match='names no bits'):
    qat.hook('asym')


def test_16_bit_fake_quantization_is_nearly_the_identity():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(64, 32)), jnp.float32)
  for axes in (None, (0,)):
    for symmetric in (True, False):
      q = qat.fake_quant(x, 16, axes, symmetric=symmetric)
      # Half a step of the 16-bit grid: max|x| / 32767 (symmetric), range / 65535.
      top = float(jnp.abs(x).max())
      step = top / (2 ** 15 - 1) if symmetric else 2 * top / (2 ** 16 - 1)
      assert float(jnp.abs(q - x).max()) <= step / 2 + 1e-6
      np.testing.assert_allclose(q, x, rtol=0, atol=2e-5 * top)


@pytest.mark.parametrize('bits', [0, 1, 33])
def test_bad_bit_widths_are_named_errors(bits):
  x = jnp.ones((4, 4))
  with pytest.raises(ValueError, match=f'bits must be in 2..16, got {bits}'):
    qat.fake_quant(x, bits)
  if bits:  # in a spec, 0 bits means float; 1 and 33 have no grid
    for spec in (f'w{bits}', f'w8,a{bits}'):
      with pytest.raises(ValueError, match=f"asks for {bits} bits; bits must be 0"):
        qat.QuantSpec.parse(spec)
      with pytest.raises(ValueError, match=f"'{spec}'"):  # what --config.quant parses
        qat.qat_rules(spec)
    with pytest.raises(ValueError, match=f'asks for {bits} bits'):
      qat.hook(f'a{bits}')
  else:
    # A QAT spec whose bits are all 0 would train in float under a quantized name.
    for spec in ('w0', 'w0,a0', 'asym'):
      with pytest.raises(ValueError, match='quantizes nothing'):
        qat.qat_rules(spec)
    assert qat.QuantSpec.parse('w0,a8') == qat.QuantSpec(activation_bits=8)


def _fake_stats(value=1.0):
  return {f'layer_{i}/{site}': {'max': value, 'percentile': value, 'mse': value}
          for i in range(CONFIG.num_layers)
          for site in ('attention/query', 'attention/key', 'attention/value',
                       'attention/out', 'mlp/intermediate', 'mlp/output')}


def test_calibration_needs_examples_and_sites_that_exist():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  model = Encoder(CONFIG)
  for batches in ([], iter(()), [{'input_ids': jnp.zeros((0, 8), jnp.int32),
                                  'attention_mask': jnp.zeros((0, 8), jnp.int32)}]):
    with pytest.raises(ValueError, match='batches hold no examples'):
      quantize.calibrate(model, params, batches)
  with pytest.raises(ValueError, match="sites 'layer_9/.*' match no product"):
    quantize.calibrate(model, params, _batches(1), sites='layer_9/.*')


def test_ptq_rejects_stats_that_name_no_projection_of_the_model():
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='stats are empty'):
    quantize.ptq(CONFIG, params, {})
  stats = {**_fake_stats(), 'layer_7/mlp/output': {'max': 1.0, 'percentile': 1.0, 'mse': 1.0}}
  with pytest.raises(ValueError, match=r"1 site\(s\) .*'layer_7/mlp/output'.*not in this model"):
    quantize.ptq(CONFIG, params, stats)
  config, qparams = quantize.ptq(CONFIG, params, _fake_stats())
  with pytest.raises(ValueError, match='already quantized'):
    quantize.ptq(config, qparams, _fake_stats())
  lacking = {site: {'max': 1.0} for site in _fake_stats()}
  with pytest.raises(ValueError, match="lack 'mse'"):
    quantize.ptq(CONFIG, params, lacking, method='mse')


def test_an_int8_run_loaded_as_float_is_a_named_error(tmp_path):
  from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
  from research.objectives import Classification  # pylint: disable=g-import-not-at-top
  from research.train import saved_runs  # pylint: disable=g-import-not-at-top
  from research.train.defaults import trainer_defaults  # pylint: disable=g-import-not-at-top
  model = TaskModel(CONFIG, Classification(num_labels=2))
  ids = jnp.ones((1, 8), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))['params']
  config, qparams = quantize.ptq(CONFIG, params, _fake_stats())
  int8 = str(tmp_path / 'int8')
  saved_runs.write_run(int8, model.clone(encoder=config), qparams, config=trainer_defaults())
  # Starting a float model from it (--config.init_from with a float architecture).
  with pytest.raises(ValueError, match=r'int8/int4-quantized run \(12 quantized projection'
                                       r'.*the model is float there'):
    saved_runs.init_params(f'{int8}:best', model, params)
  # A run folder whose model.json says float.
  (tmp_path / 'int8' / saved_runs.MODEL_FILE).unlink()
  saved_runs.write_model(int8, model)
  with pytest.raises(ValueError, match='int8/int4-quantized run .*the model is float there'):
    saved_runs.load_run(int8)
  # No model.json: only a float model could be rebuilt from config.model.
  (tmp_path / 'int8' / saved_runs.MODEL_FILE).unlink()
  with pytest.raises(ValueError, match='int8/int4-quantized run .*has no model.json'):
    saved_runs.load_run(int8)
  # The reverse: a float run into the int8 model.
  saved_runs.write_run(str(tmp_path / 'float'), model, params, config=trainer_defaults())
  with pytest.raises(ValueError, match='holds float kernels where the model is int8'):
    saved_runs.init_params(f'{tmp_path / "float"}:best', model.clone(encoder=config), qparams)


def test_fully_quantized_groups_can_be_taken_apart():
  """quant_full_sites: one group at a time (the ablation), other bits or per-token scales
  (the remedies); unknown groups and options are named."""
  from research.models import hooks  # pylint: disable=g-import-not-at-top
  seen = []
  hooks.register('seen_group', lambda arg: lambda x: (seen.append(arg), x)[1])
  ids = next(_batches(1, seed=3))['input_ids']
  params = init_params(CONFIG, jax.random.PRNGKey(0))
  per_layer = {'gelu': 2, 'layernorm': 4, 'softmax': 2}
  for group, count in per_layer.items():
    rules = qat.full_quant_rules('w8,a8', group)
    seen.clear()
    Encoder(CONFIG.replace(hooks=tuple((p, 'seen_group:' + s) for p, s in rules))).apply(
        {'params': params}, ids)
    assert len(seen) == count * CONFIG.num_layers, group
  assert qat.full_quant_rules('w8,a8', 'layernorm:16:token') == (
      (qat.FULL_QUANT_GROUPS['layernorm'], 'fake_quant:a16,token'),)
  assert qat.parse_full_sites('') == {g: (None, g == 'layernorm') for g in qat.FULL_QUANT_GROUPS}
  with pytest.raises(ValueError, match="unknown group 'norms'"):
    qat.parse_full_sites('norms')
  with pytest.raises(ValueError, match='options are'):
    qat.parse_full_sites('gelu:32')
  # Only 'attention' adds the fake-quantized attention products.
  from research.train import defaults  # pylint: disable=g-import-not-at-top
  config = defaults.trainer_defaults()
  config.quant, config.quant_full, config.quant_full_sites = 'w8,a8', True, 'gelu'
  encoder = qat.TECHNIQUE.encoder(config, CONFIG)
  assert dict(encoder.products)[qat.ATTENTION_PRODUCTS] == 'default'
  config.quant_full_sites = 'gelu,attention'
  encoder = qat.TECHNIQUE.encoder(config, CONFIG)
  assert dict(encoder.products)[qat.ATTENTION_PRODUCTS].startswith('fake_quant_act')
  config.quant_full = False
  with pytest.raises(ValueError, match='needs config.quant_full'):
    qat.TECHNIQUE.check(config)
