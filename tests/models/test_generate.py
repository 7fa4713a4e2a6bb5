"""Cached generation: equal to recomputing the full forward each step; sampling; errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.checkpoints import hf_names
from research.models.encoder import Encoder, init_params
from research.models.generate import (filter_logits, generate, left_pad, sample_logits)

TOL = 1e-4  # absolute, float32 logits
CONFIG = hf_names.gpt2_config(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                              intermediate_size=64, max_position_embeddings=24,
                              hidden_dropout=0.0, attention_dropout=0.0, pad_token_id=0)
PROMPTS = [[5, 9, 14, 3, 22, 7], [40, 2], [11, 11, 30, 8]]


@pytest.fixture(scope='module')
def params():
  # Larger-than-init weights so logits are peaked and greedy choices are not near-ties.
  @jax.jit
  def make():
    leaves, tree = jax.tree.flatten(init_params(CONFIG, jax.random.PRNGKey(0)))
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  return make()


@jax.jit
def _full_forward(params, ids, mask, last):
  def run(module):
    out, _ = module(ids, mask)
    return module.attend(out[0, last])
  return Encoder(CONFIG).apply({'params': params}, method=run)


def full_forward_logits(params, tokens, width=12):
  """Logits after the last token of one row, recomputed from scratch without a cache
  (right-padded to a fixed width, masked, so one compilation serves every step)."""
  ids = np.zeros((1, width), np.int32)
  ids[0, :len(tokens)] = tokens
  mask = (np.arange(width) < len(tokens)).astype(np.int32)[None]
  return np.asarray(_full_forward(params, ids, mask, len(tokens) - 1))


def test_greedy_cached_equals_full_recompute(params):
  ids, mask = left_pad(PROMPTS, CONFIG.pad_token_id)
  out = generate(CONFIG, params, ids, mask, max_new_tokens=6, greedy=True,
                 output_logits=True)
  assert out.tokens.shape == (3, 6) and out.logits.shape == (3, 6, 64)
  np.testing.assert_array_equal(out.lengths, [6, 6, 6])
  for row, prompt in enumerate(PROMPTS):
    sequence = list(prompt)
    for step in range(6):
      expected = full_forward_logits(params, sequence)
      np.testing.assert_allclose(np.asarray(out.logits[row, step]), expected, atol=TOL,
                                 err_msg=f'row {row} step {step}')
      assert int(out.tokens[row, step]) == int(expected.argmax()), (row, step)
      sequence.append(int(out.tokens[row, step]))


def test_cache_in_chunks_equals_one_forward(params):
  # Prefill 3 tokens, then chunks of 2 and 2: each chunk attends to the cache causally.
  from research.models.encoder import Cache  # pylint: disable=g-import-not-at-top
  ids = jnp.asarray([[5, 9, 14, 3, 22, 7, 1], [40, 2, 8, 8, 31, 6, 19]], jnp.int32)
  shape = (CONFIG.num_layers, 2, CONFIG.heads(0), 7, CONFIG.head_dim)
  cache = Cache(jnp.zeros(shape), jnp.zeros(shape), jnp.zeros((), jnp.int32))
  model = Encoder(CONFIG)
  outs = []
  for start, stop in ((0, 3), (3, 5), (5, 7)):
    out, inter = model.apply({'params': params}, ids[:, start:stop], cache=cache)
    cache = inter['cache']
    outs.append(out)
  assert int(cache.index) == 7
  full, _ = model.apply({'params': params}, ids)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=TOL)
  with pytest.raises(ValueError, match='cache slots'):
    model.apply({'params': params}, ids[:, :1], jnp.ones((2, 3)), cache=cache)


def test_stop_token_ends_a_row_and_pads_it(params):
  ids, mask = left_pad(PROMPTS, CONFIG.pad_token_id)
  settings = dict(max_new_tokens=6, greedy=True, output_logits=True)  # one compilation
  free = generate(CONFIG, params, ids, mask, **settings)
  stop = int(free.tokens[0, 2])
  out = generate(CONFIG, params, ids, mask, stop_token=stop, **settings)
  first = [int(np.argmax(np.asarray(r) == stop)) + 1 if stop in np.asarray(r) else 6
           for r in free.tokens]
  np.testing.assert_array_equal(out.lengths, first)
  for row, length in enumerate(first):
    np.testing.assert_array_equal(out.tokens[row, :length], free.tokens[row, :length])
    assert (np.asarray(out.tokens[row, length:]) == CONFIG.pad_token_id).all()


def test_sampling_is_reproducible_and_tiny_nucleus_is_greedy(params):
  ids, mask = left_pad(PROMPTS, CONFIG.pad_token_id)
  greedy = generate(CONFIG, params, ids, mask, max_new_tokens=6, greedy=True,
                    output_logits=True).tokens[:, :4]
  kwargs = dict(max_new_tokens=4, top_k=10, rng=jax.random.PRNGKey(3))
  # A nucleus this small holds only the most likely token (top_p is traced: no recompile).
  tiny_p = generate(CONFIG, params, ids, mask, top_p=1e-6, temperature=0.7, **kwargs)
  np.testing.assert_array_equal(tiny_p.tokens, greedy)
  a = generate(CONFIG, params, ids, mask, top_p=0.9, temperature=2.0, **kwargs)
  b = generate(CONFIG, params, ids, mask, top_p=0.9, temperature=2.0, **kwargs)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  c = generate(CONFIG, params, ids, mask, top_p=0.9, temperature=2.0,
               **{**kwargs, 'rng': jax.random.PRNGKey(4)})
  assert not np.array_equal(a.tokens, c.tokens)  # 12 draws at temperature 2 differ


def test_filter_logits_top_k_and_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=2) == [True, True, False, False]
  assert kept(top_p=0.5) == [True, False, False, False]
  assert kept(top_p=0.6) == [True, True, False, False]
  assert kept(top_p=0.9) == [True, True, True, False]
  assert kept(top_k=2, top_p=0.9) == [True, True, False, False]
  assert kept(top_p=1e-6) == [True, False, False, False]
  assert kept(top_k=1) == [True, False, False, False]
  assert kept() == [True] * 4


def test_samples_follow_the_filtered_distribution():
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))[None]
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  draw = jax.vmap(lambda k: sample_logits(logits, k, top_p=0.9)[0])(keys)
  freq = np.bincount(np.asarray(draw), minlength=4) / 4000
  # Renormalised over the nucleus {0, 1, 2}: 0.5/0.95, 0.3/0.95, 0.15/0.95; 3 sigma ~ 0.024.
  np.testing.assert_allclose(freq, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], atol=0.03)


def test_matches_transformers_greedy_generate(tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from research.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=64, n_positions=24, n_embd=32, n_layer=2, n_head=4, n_inner=64,
      bos_token_id=63, eos_token_id=63, pad_token_id=63, initializer_range=0.3)).eval()
  hf.save_pretrained(tmp_path)
  config, hf_params = load_pretrained(str(tmp_path))
  ids, mask = left_pad(PROMPTS, config.pad_token_id)
  ours = generate(config, hf_params, ids, mask, max_new_tokens=5, greedy=True)
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.from_numpy(ids.astype(np.int64)),
                      attention_mask=torch.from_numpy(mask.astype(np.int64)),
                      do_sample=False, max_new_tokens=5, min_new_tokens=5)
  np.testing.assert_array_equal(np.asarray(ours.tokens), ref[:, ids.shape[1]:].numpy())


@pytest.mark.parametrize('kwargs, message', [
    (dict(max_new_tokens=19), 'position table'),
    (dict(max_new_tokens=3, top_p=0.0), 'top_p'),
    (dict(max_new_tokens=3, top_p=1.5), 'top_p'),
    (dict(max_new_tokens=3, top_k=-1), 'top_k'),
    (dict(max_new_tokens=3, temperature=0.0), 'temperature'),
    (dict(max_new_tokens=0), 'max_new_tokens'),
    (dict(max_new_tokens=3, stop_token=64), 'stop_token'),
])
def test_bad_settings_raise(params, kwargs, message):
  ids, mask = left_pad(PROMPTS, 0)  # width 6: 6 + 19 > 24 positions
  with pytest.raises(ValueError, match=message):
    generate(CONFIG, params, ids, mask, **kwargs)


def test_bad_prompts_raise(params):
  ids, mask = left_pad(PROMPTS, 0)
  with pytest.raises(ValueError, match='left-padded'):
    generate(CONFIG, params, ids, mask[:, ::-1], max_new_tokens=2)
  with pytest.raises(ValueError, match='vocabulary|\\[0, 64\\)'):
    generate(CONFIG, params, ids + 60, mask, max_new_tokens=2)
  with pytest.raises(ValueError, match='causal'):
    generate(CONFIG.replace(causal=False), params, ids, mask, max_new_tokens=2)
  with pytest.raises(ValueError, match='empty'):
    left_pad([[1], []], 0)
  # Greedy ignores temperature, so temperature=0 is fine there.
  generate(CONFIG, params, ids, mask, max_new_tokens=6, greedy=True, temperature=0.0,
           output_logits=True)


def _tiny_tokenizer():
  tokenizers = pytest.importorskip('tokenizers')
  transformers = pytest.importorskip('transformers')
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(['the quick brown fox jumps over the lazy dog'] * 4,
                          vocab_size=CONFIG.vocab_size + 256, min_frequency=1,
                          special_tokens=['<|endoftext|>'])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer,  # pylint: disable=protected-access
                                              eos_token='<|endoftext|>')


def test_cli_runs_from_a_hf_folder_and_a_run_folder(params, tmp_path):
  from research.runs import generation as cli  # pylint: disable=g-import-not-at-top
  from research.checkpoints import export_pretrained  # pylint: disable=g-import-not-at-top
  from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
  from research.objectives.causal_lm import CausalLM  # pylint: disable=g-import-not-at-top
  from research.train import saved_runs  # pylint: disable=g-import-not-at-top
  tokenizer = _tiny_tokenizer()
  config = CONFIG.replace(vocab_size=len(tokenizer), pad_token_id=tokenizer.eos_token_id)
  model_params = init_params(config, jax.random.PRNGKey(0))
  export_pretrained(config, model_params, tmp_path / 'hf')
  tokenizer.save_pretrained(tmp_path / 'hf')
  saved_runs.write_run(str(tmp_path / 'run'), TaskModel(config, CausalLM()),
                       {'encoder': model_params}, tokenizer=tokenizer)
  results = []
  for ref in (str(tmp_path / 'hf'), str(tmp_path / 'run') + ':best'):
    loaded_config, loaded, tok = cli.load_model(ref)
    assert loaded_config.causal and loaded_config.vocab_size == len(tokenizer)
    results.append(cli.sample(loaded_config, loaded, tok, ['the quick', 'lazy'],
                           max_new_tokens=5, greedy=True, stop=False))
  assert results[0]['samples'] == results[1]['samples']
  assert results[0]['new_tokens'] == 10 and results[0]['tokens_per_s'] > 0


def test_filter_thresholds_equal_sorting_on_a_large_vocabulary():
  """The bisection thresholds keep exactly what sorting keeps (ties included)."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5000)).astype(np.float32) * 3
  logits[0, :50] = logits[0, 0]  # a tie at the top
  logits[1, 100:110] = -np.inf    # already filtered tokens
  for k in (1, 7, 40, 4999):
    kth = np.sort(logits, -1)[:, -k][:, None]
    np.testing.assert_array_equal(np.isfinite(np.asarray(filter_logits(jnp.asarray(logits),
                                                                       top_k=k))),
                                  (logits >= kth) & np.isfinite(logits), err_msg=f'top_k={k}')
  for p in (0.05, 0.5, 0.93):
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-logits, -1, kind='stable')
    ranked = np.take_along_axis(probs, order, -1)
    last = np.argmax(np.cumsum(ranked, -1) >= p, -1)  # first rank reaching p
    threshold = np.take_along_axis(logits, order, -1)[np.arange(3), last][:, None]
    np.testing.assert_array_equal(np.isfinite(np.asarray(filter_logits(jnp.asarray(logits),
                                                                       top_p=p))),
                                  (logits >= threshold) & np.isfinite(logits),
                                  err_msg=f'top_p={p}')


@pytest.mark.parametrize('keep, heads', [({0: [0, 2, 3], 1: [1]}, [3, 1]),
                                         ({0: [0, 2, 3], 1: []}, [3, 0])])
def test_pruned_decoder_generates_with_its_cache_as_the_masked_one(params, keep, heads):
  """Heads removed unevenly: the cache keeps the most heads any layer has and a layer
  with fewer fills the first slots; the physically pruned decoder's greedy tokens and
  logits equal those of the full-size decoder with the same heads zeroed."""
  from research.transforms import prune  # pylint: disable=g-import-not-at-top
  masked = prune.mask_heads(CONFIG, params, keep)
  small_config, small = prune.remove(CONFIG, params, keep)
  assert [small_config.heads(i) for i in range(2)] == heads
  ids, mask = left_pad(PROMPTS, CONFIG.pad_token_id)
  want = generate(CONFIG, masked, ids, mask, max_new_tokens=5, greedy=True,
                  output_logits=True)
  got = generate(small_config, small, ids, mask, max_new_tokens=5, greedy=True,
                 output_logits=True)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_allclose(got.logits, want.logits, atol=TOL)
