"""The embedding block: word, position and token-type tables, LayerNorm, dropout and
(ALBERT) the projection of a factorised embedding; `Embed.attend` ties output heads to
the word table.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import hooks, projections, products
from research.models.config import EncoderConfig
from research.models.dropout import Dropout
from research.models.layers import LayerNorm, hook, logical_param, projection

Array = jax.Array


class Embed(nn.Module):
  """An embedding table (param 'embedding' [rows, features]) that can also `attend`."""
  rows: int
  features: int
  products: tuple[tuple[str, str], ...] = ()
  hooks: tuple[tuple[str, str], ...] = ()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = logical_param(self, 'embedding', (self.rows, self.features),
                                   ('vocab', 'embed'), projections.default_init,
                                   self.param_dtype)

  def __call__(self, ids: Array) -> Array:
    table = self.embedding
    if self.hooks:  # e.g. the table fake-quantized (fully quantized BERT)
      table = hooks.apply(self.hooks, projections.site_of(self, 'table'), table)
    return jnp.take(table, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array, out_dtype=jnp.float32) -> Array:
    """x [..., features] times the transposed table: [..., rows] (tied output heads)."""
    site = '/'.join(str(p) for p in self.scope.path)
    lead = 'abcdefgh'[:x.ndim - 1]
    return products.product_at(self.products, site)(
        f'{lead}e,ve->{lead}v', x.astype(self.dtype), self.embedding.astype(self.dtype),
        out_dtype=out_dtype)


class Embeddings(nn.Module):
  config: EncoderConfig

  def setup(self):
    cfg = self.config
    table = lambda rows: Embed(rows, cfg.embed_size, cfg.products, cfg.hooks,
                               cfg.compute_dtype, cfg.params_dtype)
    self.word_embeddings = table(cfg.vocab_size)
    self.position_embeddings = table(cfg.max_position_embeddings)
    if cfg.type_vocab_size:
      self.token_type_embeddings = table(cfg.type_vocab_size)
    if cfg.embedding_norm:
      self.layer_norm = LayerNorm(cfg.layer_norm_eps, cfg.params_dtype, rules=cfg.nonlinear)
    self.dropout = Dropout(cfg.hidden_dropout)
    if cfg.embed_size != cfg.hidden_size:
      self.projection = projection(self, cfg, 'projection', 'bse,eh->bsh',
                                   (cfg.embed_size, cfg.hidden_size), ('embed_in', 'embed'))

  def __call__(self, input_ids, token_type_ids, attention_mask, deterministic,
               position_ids=None):
    cfg = self.config
    x = self.word_embeddings(input_ids)
    if position_ids is not None:  # explicit rows of the position table (decoding)
      positions = position_ids
    elif cfg.position_offset:
      # RoBERTa: real tokens are numbered from pad_token_id + 1, padding gets pad_token_id.
      mask = attention_mask.astype(jnp.int32)
      positions = jnp.cumsum(mask, axis=1) * mask + cfg.pad_token_id
    else:
      positions = jnp.arange(input_ids.shape[1])[None, :]
    x = x + self.position_embeddings(positions)
    if cfg.type_vocab_size:
      types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
      x = x + self.token_type_embeddings(types)
    factorised = cfg.embed_size != cfg.hidden_size
    if factorised and cfg.embedding_project_first:
      x = self.projection(x)
    if cfg.embedding_norm:
      x = self.layer_norm(x)
    x = hook(self, 'output', x)
    x = self.dropout(x, deterministic=deterministic)
    if factorised and not cfg.embedding_project_first:
      x = self.projection(x)
    return x.astype(cfg.compute_dtype)

  def attend(self, x: Array) -> Array:
    return self.word_embeddings.attend(x)
