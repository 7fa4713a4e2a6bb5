"""Masked language modelling (BERT's `cls.predictions`): token features -> vocabulary logits.

Head: a transform (dense to the embedding width + the encoder's activation +
LayerNorm, BERT's `cls.predictions.transform`), then logits through the tied word
embeddings (`Encoder.attend`) plus an output bias [vocab] (params 'head/{dense,
layer_norm,bias}'). Labels ('labels' [b, T]) hold the original id at predicted
positions and IGNORE_INDEX elsewhere; masking itself happens in the input pipeline
(`research/data/masking.py`, which says why).

Loss: mean cross-entropy over the predicted tokens of the batch (`count` is their
number, so accumulated micro-batches weigh by tokens). With `predict_share` > 0 the
training step computes vocabulary logits only at the predicted positions (BERT's
`max_predictions_per_seq`): a row has at most round(rate * T) of them, so gathering
ceil(share * T) + 4 positions per row keeps every one while skipping the [T, vocab]
product for the other ~85 % of tokens, which dominates the cost of a small model
(30522 x 384 multiply-adds per token for MiniLM's head against ~10.6 M for its six
layers; ~10x its layers for a 2 x 128 model). Evaluation keeps full logits.

Scores on a (fixed-mask) dev sample: MLM accuracy (percent), loss and perplexity;
`predict_batch` returns each token's argmax and the log-probability of its label, so
evaluation needs no logits on the host.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.encoded import IGNORE_INDEX
from research.models import projections
from research.models.config import EncoderConfig
from research.models.layers import LayerNorm
from research.models.nonlinear import activation
from research.objectives.base import Objective, weights_of


class LmTransform(nn.Module):
  """Dense (hidden -> embed width) + activation + LayerNorm, and the output bias.

  Returns (transformed features [..., embed], bias [vocab]); the caller multiplies by
  the tied embedding table, which lives in the encoder.
  """
  config: EncoderConfig
  activation: str = ''  # '' = the encoder's hidden_act

  @nn.compact
  def __call__(self, features):
    cfg = self.config
    lead = features.shape[:-1]
    x = features.reshape(-1, features.shape[-1])
    x = projections.make(
        cfg.projections, projections.site_of(self, 'dense'), name='dense', spec='bi,io->bo',
        kernel_shape=(x.shape[-1], cfg.embed_size), kernel_axes=('embed', 'embed_out'),
        products=cfg.products, dtype=cfg.compute_dtype, out_dtype=jnp.float32,
        param_dtype=cfg.params_dtype)(x)
    x = activation(self.activation or cfg.hidden_act)(x)
    x = LayerNorm(cfg.layer_norm_eps, cfg.params_dtype, name='layer_norm')(x)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                      (cfg.vocab_size,), cfg.params_dtype)
    return x.reshape(*lead, x.shape[-1]), bias


def lm_logits(encoder_config, encoder, features, name: str = 'head',
              transform_activation: str = '') -> jax.Array:
  """Vocabulary logits float32 [..., vocab] of the tied LM head called `name`."""
  x, bias = LmTransform(encoder_config, transform_activation, name=name)(features)
  return encoder.attend(x).astype(jnp.float32) + bias.astype(jnp.float32)


def logits_at_fn(model) -> Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]:
  """(params, ids, mask, positions [b, P]) -> MLM logits [b, P, vocab] of a TaskModel whose
  objective is MaskedLM or PreTraining (its 'mlm' output), in eval mode: the vocabulary
  product runs at the given positions only (the `head_inputs` seam)."""
  objective = model.objective
  if not isinstance(objective, MaskedLM):
    raise ValueError(f'the model\'s objective is {getattr(objective, "kind", None)!r}, not a '
                     'masked LM (masked_lm or pretraining)')

  def logits_at(params, ids, mask, positions):
    return objective.vocabulary_logits(model.apply(
        {'params': params}, ids, mask, None, deterministic=True,
        head_inputs={'positions': positions})[0])
  return logits_at


# Slack over ceil(share * T): whole-word masking may take one short word past the budget.
_PREDICTION_SLACK = 4


def prediction_count(length: int, share: float) -> int:
  """How many positions per row of length `length` the training logits cover."""
  return min(length, math.ceil(share * length) + _PREDICTION_SLACK)


def predicted_positions(labels: jax.Array, share: float) -> jax.Array:
  """int32 [b, P]: each row's labelled positions in order, then unlabelled ones to fill.

  P = `prediction_count(T, share)`. The fillers carry IGNORE_INDEX labels, so they add
  nothing to the loss; a row with more than P labelled tokens (not produced by
  `research/data/masking.py` at share >= its rate) would lose the extra ones.
  """
  length = labels.shape[1]
  order = jnp.arange(length, dtype=jnp.float32)
  score = jnp.where(labels != IGNORE_INDEX, 2.0 * length, float(length)) - order
  return jax.lax.top_k(score, prediction_count(length, share))[1].astype(jnp.int32)


def gather_positions(x: jax.Array, positions: jax.Array) -> jax.Array:
  """x [b, T, ...] at positions [b, P] -> [b, P, ...]."""
  index = positions.reshape(positions.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def token_cross_entropy(logits, labels, weights) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy over labelled tokens of real rows, their number)."""
  valid = (labels != IGNORE_INDEX).astype(jnp.float32) * weights[:, None]
  terms = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.where(labels == IGNORE_INDEX, 0, labels))
  count = valid.sum()
  return (terms * valid).sum() / jnp.maximum(count, 1.0), count


def label_predictions(logits, labels) -> dict:
  """{'ids': argmax [b, T], 'log_prob': log p(label) [b, T] (0 where unlabelled)}."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  safe = jnp.where(labels == IGNORE_INDEX, 0, labels)
  picked = jnp.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
  return {'ids': jnp.argmax(logits, -1).astype(jnp.int32),
          'log_prob': jnp.where(labels == IGNORE_INDEX, 0.0, picked)}


def lm_scores(features, predictions, prefix: str = 'mlm') -> dict[str, float]:
  """Accuracy (percent), mean loss and perplexity over every labelled token."""
  correct, log_prob, count = 0, 0.0, 0
  for feature, pred in zip(features, predictions):
    labels = np.asarray(feature['labels'])
    n = len(labels)
    valid = labels != IGNORE_INDEX
    correct += int((np.asarray(pred['ids'])[:n][valid] == labels[valid]).sum())
    log_prob += float(np.asarray(pred['log_prob'], np.float64)[:n][valid].sum())
    count += int(valid.sum())
  if not count:
    raise ValueError('no labelled (masked) tokens in the evaluation features')
  loss = -log_prob / count
  return {f'{prefix}_accuracy': 100.0 * correct / count, f'{prefix}_loss': loss,
          'perplexity': float(np.exp(min(loss, 50.0)))}


@dataclasses.dataclass(frozen=True)
class MaskedLM(Objective):
  """See the module docstring.

  Attributes:
    transform_activation: the transform's activation; '' = the encoder's hidden_act
      (BERT's `cls.predictions.transform` uses the encoder's).
    predict_share: training logits only at the predicted positions, at most
      `prediction_count(T, predict_share)` per row; set it to the masking rate or more.
      0 = logits at every position.
  """
  kind = 'masked_lm'
  transform_activation: str = ''
  predict_share: float = 0.0

  def check(self, encoder_config, layer_mix='top'):
    if self.transform_activation:
      activation(self.transform_activation)  # raises for an unknown name
    if not 0.0 <= self.predict_share <= 1.0:
      raise ValueError(f'predict_share must be in [0, 1], got {self.predict_share}')

  def head_inputs(self, batch, train):
    labels = batch.get('labels')
    if (not train or not self.predict_share or labels is None
        or prediction_count(labels.shape[1], self.predict_share) >= labels.shape[1]):
      return {}
    return {'positions': predicted_positions(labels, self.predict_share)}

  def head(self, encoder_config, encoder, features, intermediates, attention_mask,
           deterministic, positions=None):
    at = features if positions is None else gather_positions(features, positions)
    return lm_logits(encoder_config, encoder, at, 'head', self.transform_activation), features

  def labels_at(self, logits, labels):
    """The labels lined up with `logits`: gathered where the head gathered positions."""
    if logits.shape[1] == labels.shape[1]:  # full logits (gathering happens only if P < T)
      return labels
    return gather_positions(labels, predicted_positions(labels, self.predict_share))

  def _valid(self, batch):
    return (batch['labels'] != IGNORE_INDEX).astype(jnp.float32) * weights_of(batch)[:, None]

  def loss(self, outputs, batch):
    return token_cross_entropy(outputs, self.labels_at(outputs, batch['labels']),
                               weights_of(batch))

  def count(self, batch):
    return self._valid(batch).sum()

  def vocabulary_logits(self, outputs):
    """The masked-LM logits among this objective's outputs (all of them here)."""
    return outputs

  def predict(self, outputs) -> Any:
    return jnp.argmax(outputs, -1)

  def predict_batch(self, outputs, batch) -> Any:
    return label_predictions(outputs, batch['labels'])

  def score(self, spec, examples, features, predictions):
    return lm_scores(features, predictions)
