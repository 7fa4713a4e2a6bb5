"""Causal language modelling (GPT-2): every token's features -> next-token logits.

The head is the encoder's output table (`Encoder.attend`, [batch, length, vocab],
float32): the word embeddings, as GPT2LMHeadModel ties `lm_head` to `wte`, or the
model's own `lm_head` table when a checkpoint unties them. The loss is next-token cross-entropy: position t predicts token t + 1, so
logits[:, :-1] are scored against targets[:, 1:]. Targets are the batch's 'labels'
when present (IGNORE_INDEX = -100 marks tokens not to predict, transformers'
convention) and its 'input_ids' otherwise. A target counts only when it and the token
before it are real (attention mask 1) and its row has weight > 0; so right padding,
left padding and packed sequences all score only real next tokens, and the mean over
counted tokens equals transformers' `GPT2LMHeadModel(..., labels=...).loss`.

Scoring (host): loss (mean NLL per predicted token, nats), perplexity = exp(loss) and
next-token accuracy (percent), from per-row sums `token_stats(outputs, batch)`, which
`predict_batch` returns to evaluation (`research/train/evaluation.py`), so every
predicted token weighs the same however rows are batched. `predict` alone (outputs
without the batch) gives the argmax next tokens, from which `score` can still compute
accuracy against the features' ids.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.encoded import IGNORE_INDEX
from research.objectives.base import Objective, weights_of


def _shifted(batch: dict) -> tuple[jax.Array, jax.Array]:
  """(targets [batch, length - 1], valid float [batch, length - 1]) of next tokens."""
  labels = batch.get('labels')
  labels = batch['input_ids'] if labels is None else labels
  mask = batch['attention_mask'] > 0
  targets = labels[:, 1:]
  valid = (targets != IGNORE_INDEX) & mask[:, 1:] & mask[:, :-1]
  valid = valid.astype(jnp.float32) * weights_of(batch)[:, None]
  return jnp.where(targets == IGNORE_INDEX, 0, targets), valid


@dataclasses.dataclass(frozen=True)
class CausalLM(Objective):
  """See the module docstring. The vocabulary is the encoder's; `num_labels` is unused."""
  kind = 'causal_lm'
  num_labels: int = 0

  def check(self, encoder_config, layer_mix: str = 'top') -> None:
    if not encoder_config.causal:
      raise ValueError('causal_lm needs a causal (decoder) encoder: set causal=True, or '
                       'use a GPT-2 checkpoint')
    if encoder_config.embed_size != encoder_config.hidden_size:
      raise ValueError('causal_lm ties its logits to the word embeddings, which needs '
                       f'embedding_size == hidden_size (got {encoder_config.embed_size} '
                       f'and {encoder_config.hidden_size})')
    if layer_mix != 'top':
      raise ValueError(f"causal_lm reads the top layer (layer_mix='top'), got {layer_mix!r}")

  def head(self, encoder_config, encoder, features, intermediates, attention_mask,
           deterministic):
    del encoder_config, intermediates, attention_mask, deterministic
    return encoder.attend(features), features

  # -- training ------------------------------------------------------------------
  def token_nll(self, outputs, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(NLL [batch, length - 1] of each next token, its 0/1 weight, same shape)."""
    targets, valid = _shifted(batch)
    logits = outputs[:, :-1].astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets), valid

  def loss(self, outputs, batch):
    nll, valid = self.token_nll(outputs, batch)
    count = valid.sum()
    return (nll * valid).sum() / jnp.maximum(count, 1.0), count

  def count(self, batch):
    return _shifted(batch)[1].sum()

  # -- outputs -------------------------------------------------------------------
  def predict(self, outputs):
    """The argmax next token after each position, [batch, length]."""
    return jnp.argmax(outputs, -1)

  def predict_batch(self, outputs, batch: dict) -> dict[str, jax.Array]:
    """Per-row sums for `score`: see `token_stats`."""
    return self.token_stats(outputs, batch)

  def token_stats(self, outputs, batch: dict) -> dict[str, jax.Array]:
    """Per-row sums 'nll', 'tokens' and 'correct' (argmax hits) over predicted tokens."""
    nll, valid = self.token_nll(outputs, batch)
    targets, _ = _shifted(batch)
    hits = (jnp.argmax(outputs[:, :-1], -1) == targets).astype(jnp.float32)
    return {'nll': (nll * valid).sum(1), 'tokens': valid.sum(1),
            'correct': (hits * valid).sum(1)}

  def score(self, spec, examples, features: Sequence[dict], predictions: Sequence[Any]
            ) -> dict[str, float]:
    """Loss, perplexity and accuracy from per-row `token_stats` dicts, or accuracy alone
    from `predict` outputs (argmax ids) and the features' input_ids / labels."""
    del spec, examples
    if not predictions:
      raise ValueError('causal_lm score got no predictions')
    if isinstance(predictions[0], dict):
      total = {k: float(sum(float(p[k]) for p in predictions)) for k in ('nll', 'tokens',
                                                                         'correct')}
      return summarize(**total)
    correct = tokens = 0.0
    for feature, predicted in zip(features, predictions, strict=True):
      batch = {'input_ids': np.asarray(feature['input_ids'])[None],
               'attention_mask': np.asarray(feature.get(
                   'attention_mask', np.ones_like(feature['input_ids'])))[None]}
      if 'labels' in feature:
        batch['labels'] = np.asarray(feature['labels'])[None]
      targets, valid = (np.asarray(t)[0] for t in _shifted(batch))
      predicted = np.asarray(predicted)[:len(targets)]
      correct += float(((predicted == targets) * valid).sum())
      tokens += float(valid.sum())
    return {'accuracy': 100.0 * correct / max(tokens, 1.0)}


def summarize(nll: float, tokens: float, correct: float) -> dict[str, float]:
  """{'loss', 'perplexity', 'accuracy'} from summed NLL, token and hit counts."""
  if tokens <= 0:
    raise ValueError('no predicted tokens to score (every target is padding or ignored)')
  loss = nll / tokens
  return {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
          'accuracy': 100.0 * correct / tokens}


def evaluate_batches(model, params, batches: Iterable[dict]) -> dict[str, float]:
  """Loss, perplexity and next-token accuracy of a TaskModel with a CausalLM objective
  over `batches` (dicts of 'input_ids', 'attention_mask', optional 'labels'/'weights'),
  every predicted token weighing the same."""
  objective = model.objective

  @jax.jit
  def stats(params, batch):
    outputs = model.apply({'params': params}, batch['input_ids'], batch['attention_mask'],
                          deterministic=True)[0]
    return jax.tree.map(jnp.sum, objective.token_stats(outputs, batch))

  totals = {'nll': 0.0, 'tokens': 0.0, 'correct': 0.0}
  for batch in batches:
    for key, value in stats(params, batch).items():
      totals[key] += float(value)
  return summarize(**totals)
