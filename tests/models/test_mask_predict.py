"""Generation from a masked LM by iterative mask prediction: the protocol and errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.mask_predict import mask_predict, right_pad

VOCAB, MASK, SEP, CLS = 50, 3, 2, 1


def counting_logits(params, ids, mask, positions):
  """Peaks at (the token left of the [MASK]) + 1 when the sequence is exactly what the
  protocol promises ([MASK] at the position, [SEP] after it, mask covering both and
  nothing beyond); else at token 0, which the test never expects."""
  del params
  rows = jnp.arange(ids.shape[0])
  at = positions[:, 0]
  ok = ((ids[rows, at] == MASK) & (ids[rows, at + 1] == SEP)
        & (mask.sum(1) == at + 2) & (mask[rows, at + 1] == 1))
  token = jnp.where(ok, ids[rows, at - 1] + 1, 0)
  return (10.0 * jax.nn.one_hot(token, VOCAB))[:, None, :]


def test_greedy_continues_each_row_from_its_own_end():
  ids, lengths = right_pad([[CLS, 10], [CLS, 20, 21, 22]], pad_id=0)
  out = mask_predict(counting_logits, {}, ids, lengths, max_new_tokens=5, mask_id=MASK,
                     sep_id=SEP, greedy=True)
  np.testing.assert_array_equal(out, [[11, 12, 13, 14, 15], [23, 24, 25, 26, 27]])


def test_banned_tokens_are_never_sampled():
  def favour_banned(params, ids, mask, positions):
    del params, mask, positions
    logits = jnp.zeros((ids.shape[0], 1, VOCAB)).at[:, :, 7].set(20.0)
    return logits.at[:, :, 9].set(5.0)
  ids, lengths = right_pad([[CLS, 4]], pad_id=0)
  out = mask_predict(favour_banned, {}, ids, lengths, max_new_tokens=4, mask_id=MASK,
                     sep_id=SEP, banned=(7,), greedy=True)
  np.testing.assert_array_equal(out, [[9, 9, 9, 9]])
  sampled = mask_predict(favour_banned, {}, ids, lengths, max_new_tokens=16, mask_id=MASK,
                         sep_id=SEP, banned=(7,), top_k=3, rng=jax.random.PRNGKey(3))
  assert 7 not in np.asarray(sampled)


def test_bad_input_is_named():
  ids, lengths = right_pad([[CLS, 4, 5]], pad_id=0)
  kw = dict(mask_id=MASK, sep_id=SEP)
  with pytest.raises(ValueError, match='position table'):
    mask_predict(counting_logits, {}, ids, lengths, max_new_tokens=10, max_positions=8, **kw)
  with pytest.raises(ValueError, match='top_p'):
    mask_predict(counting_logits, {}, ids, lengths, max_new_tokens=2, top_p=0.0, **kw)
  with pytest.raises(ValueError, match='max_new_tokens'):
    mask_predict(counting_logits, {}, ids, lengths, max_new_tokens=0, **kw)
  with pytest.raises(ValueError, match='prompt_lengths'):
    mask_predict(counting_logits, {}, ids, np.asarray([9]), max_new_tokens=2, **kw)
  with pytest.raises(ValueError, match='non-empty'):
    right_pad([[CLS], []], pad_id=0)


def test_a_real_masked_lm_writes_what_a_full_forward_predicts(minilm_folder, tok):
  """MiniLM with a fresh MLM head through research/runs/generation.py's encoder path: the first
  generated token is the argmax (specials excluded) of a plain forward at the [MASK]."""
  from research.runs import generation as cli  # pylint: disable=g-import-not-at-top
  from research.checkpoints.hf_pretraining_heads import load_pretraining_model  # pylint: disable=g-import-not-at-top
  model, params = load_pretraining_model(str(minilm_folder), pair='')
  result = cli.sample_masked(model, params, tok, ['the cat sat on the'], max_new_tokens=3,
                          greedy=True)
  assert len(result['samples']) == 1 and result['new_tokens'] == 3
  ids = tok('the cat sat on the')['input_ids'][:-1] + [tok.mask_token_id, tok.sep_token_id]
  ids = np.asarray([ids], np.int32)
  logits = np.array(model.apply({'params': params}, ids, np.ones_like(ids), None,
                                  deterministic=True)[0])[0, ids.shape[1] - 2]
  logits[tok.all_special_ids] = -np.inf
  assert result['tokens'][0, 0] == logits.argmax()
