"""Task models: the encoder, a layer mix choosing what feeds the head, and an objective's head.

    model = TaskModel(encoder_config, Classification(num_labels=2, pooling='mean'))
    outputs, intermediates = model.apply({'params': params}, ids, mask)

Params: {'encoder': <Encoder params>, 'layer_mix': {...} (scalar mix only),
'head': {...} (the objective's head, e.g. {'dense'?, 'out'})}. The objective (see
research/objectives) is an object given to the model: it builds its head from the
mixed features and says what the outputs mean (loss, predictions, scores), so the
model never switches on a task kind. This module holds the building blocks heads share.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import projections
from research.models.config import EncoderConfig
from research.models.dropout import Dropout
from research.models.encoder import Encoder, mean_pool
from research.transforms.layer_mix import make_layer_mix

POOLINGS = ('cls', 'mean', 'pooler')
HEAD_ACTIVATIONS = {'tanh': jnp.tanh, 'relu': jax.nn.relu, 'gelu': jax.nn.gelu}


def pool(features: jax.Array, intermediates: dict, attention_mask: jax.Array,
         pooling: str) -> jax.Array:
  """One vector per sequence: 'cls' first token, 'mean' over real tokens, or 'pooler'
  (the encoder's tanh pooler of the top layer's first token)."""
  if pooling == 'pooler':
    return intermediates['pooled']
  if pooling == 'mean':
    return mean_pool(features, attention_mask)
  if pooling == 'cls':
    return features[:, 0]
  raise ValueError(f'Unknown pooling {pooling!r}; expected one of {POOLINGS}')


class Head(nn.Module):
  """Optional dense + activation ('dense'), dropout, then the output layer ('out').

  Both are projections (`projections.py`) under the encoder's projection and product
  rules (sites 'head/dense', 'head/out' in a TaskModel).
  """
  outputs: int
  config: EncoderConfig
  hidden: int = 0
  activation: str = 'tanh'
  dropout: float = 0.1

  def _dense(self, name: str, fan_in: int, fan_out: int):
    cfg = self.config
    return projections.make(
        cfg.projections, projections.site_of(self, name), name=name, spec='bi,io->bo',
        kernel_shape=(fan_in, fan_out), kernel_axes=('embed', 'mlp'), products=cfg.products,
        dtype=cfg.compute_dtype, out_dtype=jnp.float32, param_dtype=cfg.params_dtype)

  @nn.compact
  def __call__(self, features, deterministic: bool):
    if self.activation not in HEAD_ACTIVATIONS:
      raise ValueError(f'Unknown head activation {self.activation!r}; expected one of '
                       f'{sorted(HEAD_ACTIVATIONS)}')
    lead = features.shape[:-1]
    x = features.reshape(-1, features.shape[-1])  # token heads: one row per token
    if self.hidden:
      x = HEAD_ACTIVATIONS[self.activation](self._dense('dense', x.shape[-1], self.hidden)(x))
    x = Dropout(self.dropout)(x, deterministic=deterministic)
    return self._dense('out', x.shape[-1], self.outputs)(x).reshape(*lead, self.outputs)


class TaskModel(nn.Module):
  """Encoder + layer mix + the objective's head. Returns `(outputs, intermediates)`.

  Attributes:
    encoder: the encoder's config.
    objective: an objective object (research/objectives): builds the head.
    layer_mix: what feeds the head, a `make_layer_mix` spec ('top', 'scalar_mix', ...).
  """
  encoder: EncoderConfig
  objective: Any
  layer_mix: str = 'top'

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               deterministic: bool = True, output_attentions: bool = False,
               output_qkv: bool = False, head_inputs: dict | None = None):
    self.objective.check(self.encoder, self.layer_mix)
    encoder = Encoder(self.encoder, name='encoder')
    _, inter = encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic,
                       output_attentions=output_attentions, output_qkv=output_qkv)
    mix = make_layer_mix(self.layer_mix, self.encoder.num_layers, name='layer_mix')
    features = mix(inter['hidden_states'], attention_mask)
    outputs, features = self.objective.head(self.encoder, encoder, features, inter,
                                            attention_mask, deterministic,
                                            **(head_inputs or {}))
    inter['features'] = features
    return outputs, inter

  def to_dict(self) -> dict:
    """The architecture as JSON-able data (a run's model.json)."""
    return {'encoder': self.encoder.to_dict(), 'objective': self.objective.to_dict(),
            'layer_mix': self.layer_mix}
