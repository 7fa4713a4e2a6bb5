"""Perplexity and pseudo-perplexity against hand computation with a bigram 'model'."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.evaluate.lm_perplexity import causal_perplexity, pseudo_perplexity

VOCAB, CLS, SEP, MASK = 12, 1, 2, 3
TABLE = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (VOCAB, VOCAB)))
CHUNKS = [[5, 7, 9, 4, 11], [6, 6, 8, 10, 5], [4, 9, 9, 7, 6]]


def _log_softmax(x):
  return x - np.log(np.exp(x - x.max()).sum()) - x.max()


def test_causal_perplexity_is_the_mean_next_token_nll():
  def bigram(params, ids, mask):
    del mask
    return params[ids]  # row t's logits depend on token t alone
  nll = [-_log_softmax(TABLE[c[t - 1]])[c[t]] for c in CHUNKS for t in range(1, len(c))]
  out = causal_perplexity(bigram, jnp.asarray(TABLE), CHUNKS, batch_size=2)
  assert out['tokens'] == 12
  assert out['nll'] == pytest.approx(np.mean(nll), rel=1e-5)
  assert out['perplexity'] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)


def test_pseudo_perplexity_masks_each_token_once():
  def left_bigram(params, ids, mask, positions):
    del mask
    rows = jnp.arange(ids.shape[0])
    at = positions[:, 0]
    # Only the scored token is masked; a visible target would be a leak.
    leak = jnp.where(ids[rows, at] == MASK, 0.0, 1e3)
    return (params[ids[rows, at - 1]] + leak[:, None])[:, None, :]
  nll = []
  for c in CHUNKS:
    wrapped = [CLS] + c
    nll += [-_log_softmax(TABLE[wrapped[i - 1]])[wrapped[i]] for i in range(1, len(c) + 1)]
  # 15 masked copies in batches of 4: the last batch is padded and its padding not counted.
  out = pseudo_perplexity(left_bigram, jnp.asarray(TABLE), CHUNKS, cls_id=CLS, sep_id=SEP,
                          mask_id=MASK, batch_size=4)
  assert out['tokens'] == 15
  assert out['nll'] == pytest.approx(np.mean(nll), rel=1e-5)


def test_chunks_of_different_lengths_are_refused():
  with pytest.raises(ValueError, match='one length'):
    causal_perplexity(lambda p, i, m: p[i], jnp.asarray(TABLE), [[1, 2, 3], [1, 2]])
