"""Task models: the encoder, a layer mix choosing what feeds the head, and a task head.

Params: {'encoder': <Encoder params>, 'layer_mix': {...} (scalar mix only),
'head': {'dense'?, 'out'}}. Heads by task kind:

* 'classification' / 'regression': pool the mixed features ('cls' first token,
  'mean' over real tokens, or 'pooler' = the encoder's tanh pooler on the top
  layer), optional tanh dense, dropout, linear -> [batch, num_labels] (1 for regression);
* 'tagging': per-token linear -> [batch, length, num_labels];
* 'span': per-token linear to 2 -> start and end logits, each [batch, length].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.data.encoded import IGNORE_INDEX
from research.models.config import EncoderConfig
from research.models.dropout import Dropout
from research.models.encoder import Encoder, mean_pool
from research.transforms.layer_mix import make_layer_mix

KINDS = ('classification', 'regression', 'tagging', 'span')
POOLINGS = ('cls', 'mean', 'pooler')
_init = nn.initializers.truncated_normal(stddev=0.02)


class TaskModel(nn.Module):
  """Encoder + layer mix + head. Returns `(logits, intermediates)`.

  Attributes:
    encoder: the encoder's config.
    kind: one of KINDS.
    num_labels: classes (classification, tagging); ignored for regression and span.
    layer_mix: what feeds the head, a `make_layer_mix` spec ('top', 'scalar_mix', ...).
    pooling: how sentence-level heads pool tokens, one of POOLINGS.
    head_hidden: width of an extra tanh dense before the output (0 = none).
    head_dropout: dropout before the output layer.
  """
  encoder: EncoderConfig
  kind: str
  num_labels: int = 2
  layer_mix: str = 'top'
  pooling: str = 'cls'
  head_hidden: int = 0
  head_dropout: float = 0.1

  def _check(self):
    if self.kind not in KINDS:
      raise ValueError(f'Unknown task kind {self.kind!r}; expected one of {KINDS}')
    if self.pooling not in POOLINGS:
      raise ValueError(f'Unknown pooling {self.pooling!r}; expected one of {POOLINGS}')
    if self.pooling == 'pooler' and (self.layer_mix != 'top' or not self.encoder.use_pooler):
      raise ValueError("pooling='pooler' needs layer_mix='top' and an encoder with a pooler")
    if self.kind in ('classification', 'tagging') and self.num_labels < 2:
      raise ValueError(f'{self.kind} needs num_labels >= 2, got {self.num_labels}')

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, output_attentions: bool = False):
    self._check()
    last, inter = Encoder(self.encoder, name='encoder')(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic,
        output_attentions=output_attentions)
    mix = make_layer_mix(self.layer_mix, self.encoder.num_layers, name='layer_mix')
    features = mix(inter['hidden_states'], attention_mask)
    dtype = self.encoder.compute_dtype
    if self.kind in ('classification', 'regression'):
      if self.pooling == 'pooler':
        features = inter['pooled']
      elif self.pooling == 'mean':
        features = mean_pool(features, attention_mask)
      else:
        features = features[:, 0]
    outputs = {'classification': self.num_labels, 'regression': 1,
               'tagging': self.num_labels, 'span': 2}[self.kind]
    logits = Head(outputs, self.head_hidden, self.head_dropout, dtype, name='head')(
        features, deterministic)
    logits = logits.astype(jnp.float32)
    if self.kind == 'regression':
      logits = logits[..., 0]
    elif self.kind == 'span':
      logits = {'start': logits[..., 0], 'end': logits[..., 1]}
    inter['features'] = features
    return logits, inter


class Head(nn.Module):
  """Optional tanh dense ('dense'), dropout, then the output layer ('out')."""
  outputs: int
  hidden: int = 0
  dropout: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features, deterministic: bool):
    if self.hidden:
      features = jnp.tanh(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_init,
                                   name='dense')(features))
    features = Dropout(self.dropout)(features, deterministic=deterministic)
    return nn.Dense(self.outputs, dtype=self.dtype, kernel_init=_init, name='out')(features)


def loss_fn(kind: str, logits, batch) -> tuple[jax.Array, jax.Array]:
  """Mean task loss over real examples and the number of terms averaged.

  Uses `batch['weights']` (0 for padding rows) and ignores labels equal to
  IGNORE_INDEX (tagging). Span loss is the mean of start and end cross-entropies.
  """
  weights = batch.get('weights')
  if weights is None:
    weights = jnp.ones(batch['input_ids'].shape[0], jnp.float32)
  if kind == 'classification':
    terms = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])
  elif kind == 'regression':
    terms = jnp.square(logits - batch['labels'].astype(jnp.float32))
  elif kind == 'tagging':
    labels = batch['labels']
    valid = (labels != IGNORE_INDEX).astype(jnp.float32) * weights[:, None]
    terms = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(labels == IGNORE_INDEX, 0, labels))
    count = valid.sum()
    return (terms * valid).sum() / jnp.maximum(count, 1.0), count
  elif kind == 'span':
    start = optax.softmax_cross_entropy_with_integer_labels(logits['start'],
                                                            batch['start_positions'])
    end = optax.softmax_cross_entropy_with_integer_labels(logits['end'],
                                                          batch['end_positions'])
    terms = 0.5 * (start + end)
  else:
    raise ValueError(f'Unknown task kind {kind!r}')
  count = weights.sum()
  return (terms * weights).sum() / jnp.maximum(count, 1.0), count


def predictions(kind: str, logits):
  """Host-side predictions from logits: class ids, scores, tags, or start/end logits."""
  if kind in ('classification', 'tagging'):
    return jnp.argmax(logits, -1)
  return logits
