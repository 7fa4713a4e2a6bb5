"""A BERT-family Transformer encoder (or GPT-style decoder) in Flax linen.

Parameter tree (stable names; checkpoints/ maps Hugging Face names onto them):

  embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
  embeddings/layer_norm/{scale,bias}, embeddings/projection/{kernel,bias} (factorised)
  layer_<j>/attention/{query,key,value}/{kernel [hidden, heads, head_dim], bias}
  layer_<j>/attention/out/{kernel [heads, head_dim, hidden], bias}
  layer_<j>/attention_norm, layer_<j>/mlp/{intermediate,output}, layer_<j>/output_norm
  final_norm/{scale,bias}                (pre-LayerNorm models)
  pooler/{kernel,bias}                   (when use_pooler)

`layer_<j>` is a parameter set; application i of num_layers runs the attention block
of set `attention_map[i]` and the FFN block of set `ffn_map[i]` (both i by default;
all zeros is ALBERT's cross-layer sharing). Heads are a separate kernel axis so
structured pruning removes them by slicing. Each projection is a module that owns its
kernel and runs its own product (`projections.py`, `products.py`), so a transform can
swap how a kernel is stored or multiplied by config rules alone.

`Encoder.__call__` returns `(last_hidden_state, intermediates)` where intermediates
holds every layer's hidden states (index 0 = embedding output), the attention
probabilities and each layer's queries, keys and values when asked, and the pooled
output when there is a pooler. `Encoder.attend(x)` multiplies by the transposed word
embeddings (tied output heads: masked LM, causal LM). With `cache=Cache(...)` a causal
model runs the same blocks on new tokens only, reading and writing earlier tokens' keys
and values (incremental decoding, `generate.py`); without it nothing changes.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import blocked_attention, hooks, nonlinear, projections, products
from research.models.config import EncoderConfig
from research.models.dropout import Dropout
from research.models.embeddings import Embed, Embeddings
from research.models.layers import LayerNorm, hook, logical_param, projection

Array = jax.Array


def attention_bias(attention_mask: Array, length: int, causal: bool, first=0) -> Array:
  """Additive mask [batch, 1, length or 1, keys] from `attention_mask` [batch, keys]:
  padding keys (and if `causal`, keys after query j's position `first` + j; `first` is
  the cache index when decoding) get a large negative score."""
  keep = attention_mask[:, None, None, :] > 0
  if causal:
    keys = jnp.arange(attention_mask.shape[1])
    keep = keep & (keys[None, :] <= first + jnp.arange(length)[:, None])[None, None]
  return jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


class Cache(NamedTuple):
  """Keys and values of earlier tokens, for incremental decoding (`generate.py`).

  Attributes:
    keys, values: [num_layers (applications), batch, heads, max_len, head_dim]; heads is
      the most any layer has (a pruned layer fills the first of them).
    index: int32 scalar, the slot where the next tokens' keys and values go.
  """
  keys: Array
  values: Array
  index: Array


class Attention(nn.Module):
  """Multi-head self-attention with a padding (and optionally causal) mask."""
  config: EncoderConfig
  num_heads: int

  def _projections(self):
    cfg = self.config
    n, d, hidden = self.num_heads, cfg.head_dim, cfg.hidden_size
    qkv = [projection(self, cfg, name, 'bsi,ihd->bshd', (hidden, n, d),
                      ('embed', 'heads', 'kv')) for name in ('query', 'key', 'value')]
    # The output stays float32 for the residual add and LayerNorm that follow.
    out = projection(self, cfg, 'out', 'bhqd,hde->bqe', (n, d, hidden),
                     ('heads', 'kv', 'embed'), out_dtype=jnp.float32)
    return qkv, out

  def _fusable(self, qkv) -> bool:
    cfg = self.config
    sites = [projections.site_of(self, name) for name in ('query', 'key', 'value')]
    kind = type(qkv[0])
    return (cfg.fuse_qkv and hasattr(kind, 'fused')
            and all(type(q) is kind for q in qkv)  # pylint: disable=unidiomatic-typecheck
            and len({products.spec_at(cfg.products, s) for s in sites}) == 1)

  def _plain_chain(self, site: str) -> bool:
    """No hook, non-default product or other softmax acts between the projections and
    the context."""
    cfg = self.config
    return (all(products.spec_at(cfg.products, site + p) == 'default'
                for p in ('scores', 'context'))
            and all(hooks.spec_at(cfg.hooks, site + h) == 'identity'
                    for h in ('softmax_in', 'softmax_out'))
            and nonlinear.spec_at(cfg.nonlinear, site + 'softmax') == 'default')

  @nn.compact
  def __call__(self, x, bias, deterministic, output_attentions, output_qkv=False,
               cache: 'Cache | None' = None, layer: int = 0):
    cfg = self.config
    n, d = self.num_heads, cfg.head_dim
    dtype = cfg.compute_dtype
    qkv, out_proj = self._projections()
    if n == 0:  # every head pruned: the block reduces to its output bias
      for p in qkv:
        p.weights()  # the (empty) parameters keep their place in the tree
      _, out_bias = out_proj.weights()
      return (jnp.broadcast_to(out_bias.astype(jnp.float32), x.shape), None,
              None if cache is None else (cache.keys, cache.values))

    if self._fusable(qkv):
      # One matmul for Q, K and V (the projection kind's `fused`), as a plain 2-D product:
      # output [b, s, 3 * heads * d] -> [b, s, 3, heads, d]. Written with the (3, heads, d)
      # axes flattened so XLA:CPU cannot reorder them in the backward (it chose to
      # transpose the cotangent to [b, s, d, heads, 3], a 9 ms copy per layer).
      y = type(qkv[0]).fused(qkv, x, dtype)
      y = y.reshape(*x.shape[:2], 3, n, d)
      # -> three [batch, heads, length, d]; split (not indexing) so the backward is one
      # concatenation instead of three pad-and-add passes.
      q, k, v = (t[0] for t in jnp.split(y.transpose(2, 0, 3, 1, 4), 3, axis=0))
    else:
      q, k, v = (p(x).transpose(0, 2, 1, 3) for p in qkv)
    if cache is not None:
      # Incremental decoding: write these tokens' keys and values into application
      # `layer`'s slot of the cache at `cache.index`, then attend over the whole slot
      # (`bias` masks the slots not yet written). The updated cache is returned in
      # place of the queries, keys and values.
      start = (layer, 0, 0, cache.index, 0)
      keys = jax.lax.dynamic_update_slice(cache.keys, k[None].astype(cache.keys.dtype), start)
      values = jax.lax.dynamic_update_slice(cache.values, v[None].astype(cache.values.dtype),
                                            start)
      # A pruned layer uses the first `n` of the cache's (max over layers) head slots.
      k, v = keys[layer, :, :n].astype(dtype), values[layer, :, :n].astype(dtype)
    site = projections.site_of(self, '')
    # A padding-only bias ([b, 1, 1, k]; not a causal one, which has a query axis and
    # would be copied per head) keeps the blocks as small as the scores they guard.
    if (cache is None and not output_attentions and bias.shape[2] == 1
        and (deterministic or cfg.attention_dropout == 0)
        and self._plain_chain(site) and blocked_attention.use_blocks(q.shape, k.shape)):
      # Long sequences on CPU: the same chain a cache-sized block of heads at a time.
      ctx = blocked_attention.attend(q, k, v, bias, scale=d ** -0.5, dtype=dtype)
      return out_proj(ctx), None, ((q, k, v) if output_qkv else None)
    # Scores, scale, mask and softmax in float32: bf16 exponentials lose too much.
    scores = products.product_at(cfg.products, site + 'scores')(
        'bhqd,bhkd->bhqk', q, k, out_dtype=jnp.float32)
    scores = hook(self, 'softmax_in', scores * jnp.float32(d ** -0.5))
    softmax = nonlinear.at(cfg.nonlinear, site + 'softmax').softmax
    probs = hook(self, 'softmax_out', softmax(scores, bias)).astype(dtype)
    probs_out = probs if output_attentions else None
    probs = Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
    # Context stays [batch, heads, q, d]: asking the batched matmul for [b, q, h, d]
    # directly made XLA:CPU emit it transposed and copy it (2x slower, measured).
    ctx = products.product_at(cfg.products, site + 'context')('bhqk,bhkd->bhqd', probs, v)
    if cache is not None:
      return out_proj(ctx), probs_out, (keys, values)
    return out_proj(ctx), probs_out, ((q, k, v) if output_qkv else None)


class Mlp(nn.Module):
  config: EncoderConfig
  width: int

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    if self.width == 0:  # FFN pruned away entirely: only the output bias remains
      bias = logical_param(self, 'output_bias', (cfg.hidden_size,), ('embed',),
                    nn.initializers.zeros, cfg.params_dtype)
      return jnp.broadcast_to(bias.astype(jnp.float32), x.shape)
    # Bias and activation in float32 (one cast per matmul input); output float32 too.
    h = projection(self, cfg, 'intermediate', 'bsi,io->bso', (cfg.hidden_size, self.width),
                   ('embed', 'mlp'), out_dtype=jnp.float32)(x)
    family = nonlinear.at(cfg.nonlinear, projections.site_of(self, 'activation'))
    h = hook(self, 'gelu_out', family.activation(cfg.hidden_act, hook(self, 'gelu_in', h)))
    h = h.astype(cfg.compute_dtype)
    return projection(self, cfg, 'output', 'bsi,io->bso', (self.width, cfg.hidden_size),
                      ('mlp', 'embed'), out_dtype=jnp.float32)(h)


def _layer_norm(cfg: EncoderConfig) -> LayerNorm:
  """A block's LayerNorm: output in compute_dtype, arithmetic by `cfg.nonlinear`."""
  return LayerNorm(cfg.layer_norm_eps, cfg.params_dtype, cfg.compute_dtype, cfg.nonlinear)


class Layer(nn.Module):
  """One parameter set: an attention block and an FFN block, run separately.

  Post-LN (BERT): x = LN(x + Attn(x)); x = LN(x + FFN(x)).
  Pre-LN (GPT-2): x = x + Attn(LN(x)); x = x + FFN(LN(x)).
  Blocks are separate methods so an application can run one set's attention and
  another's FFN (`attention_map`, `ffn_map`); a block no application runs creates no
  parameters.
  """
  config: EncoderConfig
  num_heads: int
  ffn_width: int

  def setup(self):
    cfg = self.config
    self.attention = Attention(cfg, self.num_heads)
    self.attention_norm = _layer_norm(cfg)
    self.mlp = Mlp(cfg, self.ffn_width)
    self.output_norm = _layer_norm(cfg)
    self.dropout = Dropout(cfg.hidden_dropout)

  def _residual(self, x, block, norm_name, deterministic):
    norm = lambda h: hook(self, f'{norm_name}/output', getattr(self, norm_name)(
        hook(self, f'{norm_name}/input', h)))
    if self.config.norm_position == 'pre':
      y, *extra = block(norm(x))
      return (x.astype(jnp.float32) + self.dropout(y, deterministic=deterministic)
              ).astype(self.config.compute_dtype), extra
    y, *extra = block(x)
    return norm(x + self.dropout(y, deterministic=deterministic)), extra

  def attention_block(self, x, bias, deterministic, output_attentions, output_qkv=False,
                      cache=None, layer=0):
    x, (probs, qkv) = self._residual(
        x, lambda h: self.attention(h, bias, deterministic, output_attentions, output_qkv,
                                    cache, layer),
        'attention_norm', deterministic)
    return x, probs, qkv

  def ffn_block(self, x, deterministic):
    x, _ = self._residual(x, lambda h: (self.mlp(h),), 'output_norm', deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  def __call__(self, x, bias, deterministic, output_attentions, output_qkv=False):
    x, probs, qkv = self.attention_block(x, bias, deterministic, output_attentions,
                                         output_qkv)
    return self.ffn_block(x, deterministic), probs, qkv


class Encoder(nn.Module):
  """The encoder. See the module docstring for parameter names and outputs."""
  config: EncoderConfig

  def setup(self):
    cfg = self.config
    self.embeddings = Embeddings(cfg)
    # A set's sizes come from the applications that run its blocks (the config checks
    # that they agree); a block no application runs never creates its parameters.
    heads = {cfg.attention_set(i): cfg.heads(i) for i in range(cfg.num_layers)}
    widths = {cfg.ffn_set(i): cfg.ffn(i) for i in range(cfg.num_layers)}
    # Named layer_0, layer_1, ...: linen names list entries <attribute>_<index>.
    self.layer = [Layer(cfg, heads.get(j, 0), widths.get(j, 0))
                  for j in range(cfg.parameter_sets)]
    if cfg.norm_position == 'pre':
      self.final_norm = _layer_norm(cfg)
    if cfg.use_pooler:
      self.pooler = projection(self, cfg, 'pooler', 'bi,io->bo',
                               (cfg.hidden_size, cfg.hidden_size), ('embed', 'embed_out'))
    if not cfg.tie_word_embeddings:  # an output table of its own ('lm_head/embedding')
      self.lm_head = Embed(cfg.vocab_size, cfg.hidden_size, cfg.products, (),
                           cfg.compute_dtype, cfg.params_dtype)

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, *, deterministic: bool = True,
               output_attentions: bool = False, output_qkv: bool = False,
               position_ids: Array | None = None, cache: Cache | None = None):
    """Encodes a batch of token ids.

    Args:
      input_ids: int [batch, length].
      attention_mask: 1 for real tokens, 0 for padding; defaults to all ones.
      token_type_ids: segment ids; ignored when the model has no token types.
      deterministic: disables dropout when True (evaluation).
      output_attentions: also return every layer's attention probabilities.
      output_qkv: also return every layer's queries, keys and values.
      position_ids: int [batch, length] rows of the position table; None numbers
        tokens from 0 (from `cache.index` with a cache; RoBERTa's offset rule without).
      cache: a causal model's keys and values of earlier tokens (`Cache`); the new
        tokens are written at `cache.index` and attend to every earlier slot, and
        `attention_mask` is then [batch, max_len] over the cache's slots. None (the
        default) leaves the model exactly as without this argument.

    Returns:
      `(last_hidden_state, intermediates)`: [batch, length, hidden] and a dict with
      'hidden_states' (num_layers + 1 arrays), 'attentions' (num_layers arrays of
      [batch, heads, length, length], when asked), 'queries' / 'keys' / 'values'
      (num_layers arrays of [batch, heads, length, head_dim], when asked) and
      'pooled' (with a pooler); with a cache also 'cache', the updated `Cache`.
    """
    cfg = self.config
    if input_ids.shape[1] > cfg.max_length:
      raise ValueError(
          f'Sequence length {input_ids.shape[1]} exceeds the position table '
          f'({cfg.max_length} positions); truncate inputs to max_length={cfg.max_length}')
    if cache is not None:
      return self._decode(input_ids, attention_mask, token_type_ids, position_ids, cache)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids, attention_mask, deterministic,
                        position_ids)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    bias = attention_bias(attention_mask, input_ids.shape[1], cfg.causal)
    x, hidden_states, attentions, qkvs, _ = self._layers(x, bias, deterministic,
                                                         output_attentions, output_qkv)

    intermediates: dict[str, Any] = {'hidden_states': tuple(hidden_states)}
    if output_attentions:
      intermediates['attentions'] = tuple(attentions)
    if output_qkv:
      for index, key in enumerate(('queries', 'keys', 'values')):
        # A layer whose heads were all pruned has no queries, keys or values: None.
        intermediates[key] = tuple(None if t is None else t[index] for t in qkvs)
    if cfg.use_pooler:
      intermediates['pooled'] = jnp.tanh(self.pooler(x[:, 0]))
    if not cfg.tie_word_embeddings and self.is_initializing():
      self.lm_head.embedding  # pylint: disable=pointless-statement  (init creates it)
    return x, intermediates

  def _decode(self, input_ids, attention_mask, token_type_ids, position_ids, cache):
    """`__call__` with a key/value cache (no dropout): the same blocks, with each
    attention reading and writing its application's slot of the cache."""
    cfg = self.config
    if not cfg.causal:
      raise ValueError('a key/value cache needs a causal model (config.causal=True)')
    batch, length = input_ids.shape
    slots = cache.keys.shape[3]
    index = jnp.asarray(cache.index, jnp.int32)
    if attention_mask is None:
      attention_mask = jnp.ones((batch, slots), jnp.int32)
    if attention_mask.shape != (batch, slots):
      raise ValueError(f'with a cache, attention_mask covers the {slots} cache slots: '
                       f'expected shape {(batch, slots)}, got {attention_mask.shape}')
    if position_ids is None:
      position_ids = (index + jnp.arange(length))[None, :]
    x = self.embeddings(input_ids, token_type_ids, None, True, position_ids)
    bias = attention_bias(attention_mask, length, True, first=index)
    x, hidden_states, _, _, cache = self._layers(
        x, bias, True, cache=Cache(cache.keys, cache.values, index))
    return x, {'hidden_states': tuple(hidden_states),
               'cache': cache._replace(index=index + length)}

  # No name scope of its own: op names stay 'Encoder/layer_<j>.attention_block/...',
  # which profiles group by (evaluate/hlo_ops.py).
  @nn.nowrap
  def _layers(self, x, bias, deterministic, output_attentions=False, output_qkv=False,
              cache=None):
    """The num_layers applications, then the pre-LN final norm (both paths run these).

    Returns (x, hidden_states (num_layers + 1; 0 = the given x), attentions and qkvs
    (per application; None unless asked), cache (None, or every slot written)).
    """
    cfg = self.config
    hidden_states, attentions, qkvs = [x], [], []
    for i in range(cfg.num_layers):
      x, probs, qkv = self.layer[cfg.attention_set(i)].attention_block(
          x, bias, deterministic, output_attentions, output_qkv, cache, i)
      if cache is not None:  # with a cache the block returns the written keys and values
        cache, qkv = cache._replace(keys=qkv[0], values=qkv[1]), None
      x = self.layer[cfg.ffn_set(i)].ffn_block(x, deterministic)
      hidden_states.append(x)
      attentions.append(probs)
      qkvs.append(qkv)
    if cfg.norm_position == 'pre':
      x = hook(self, 'final_norm/output', self.final_norm(hook(self, 'final_norm/input', x)))
      hidden_states[-1] = x
    return x, hidden_states, attentions, qkvs, cache

  def attend(self, x: Array) -> Array:
    """Logits over the vocabulary: x [..., embed_size] times the word embeddings, or
    x [..., hidden] times the model's own output table when they are untied."""
    if not self.config.tie_word_embeddings:
      return self.lm_head.attend(x)
    return self.embeddings.attend(x)


def mean_pool(hidden: Array, attention_mask: Array) -> Array:
  """Average of the hidden states of real (non-padding) tokens, [batch, hidden]."""
  mask = attention_mask[..., None].astype(hidden.dtype)
  return (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)


def first_token(hidden: Array) -> Array:
  """The first ([CLS]) token's hidden state, [batch, hidden]."""
  return hidden[:, 0]


def init_params(config: EncoderConfig, rng: Array, length: int = 8):
  """Randomly initialised params (logical-partitioning boxes removed)."""
  ids = jnp.zeros((1, min(length, config.max_length)), jnp.int32)
  variables = Encoder(config).init(rng, ids)
  return nn.meta.unbox(variables['params'])
