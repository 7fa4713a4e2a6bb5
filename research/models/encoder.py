"""A BERT-family Transformer encoder in Flax linen.

Parameter tree (stable names; checkpoints/ maps Hugging Face names onto them):

  embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
  embeddings/layer_norm/{scale,bias}, embeddings/projection/{kernel,bias} (factorised)
  layer_<i>/attention/{query,key,value}/{kernel [hidden, heads, head_dim], bias}
  layer_<i>/attention/out/{kernel [heads, head_dim, hidden], bias}
  layer_<i>/attention_norm, layer_<i>/mlp/{intermediate,output}, layer_<i>/output_norm
  shared_layer/...                       (instead of layer_<i> when share_layers)
  pooler/{kernel,bias}                   (when use_pooler)

Heads are a separate kernel axis so structured pruning removes them by slicing.
`Encoder.__call__` returns `(last_hidden_state, intermediates)` where intermediates
holds every layer's hidden states (index 0 = embedding output), the attention
probabilities when asked, and the pooled output when there is a pooler.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import mixed_matmul
from research.models.dropout import Dropout
from research.models.config import EncoderConfig

Array = jax.Array
_init = nn.initializers.truncated_normal(stddev=0.02)


def activation(name: str):
  """The activation function called `name` (see config.ACTIVATIONS)."""
  if name == 'gelu':
    # Exact GELU written with erf (jax.nn.gelu uses an erfc form). On XLA:CPU the two
    # timed within noise of each other (benchmarks/encoder_layer_ops_cpu.py), while the
    # erfc form's HLO computed the bias add twice. Results agree to float32 rounding.
    return lambda x: x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))
  if name == 'gelu_tanh':
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == 'relu':
    return jax.nn.relu
  raise ValueError(f'Unknown activation {name!r}')


def _param(module: nn.Module, name: str, shape, axes, init, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class Weights(nn.Module):
  """A kernel and a bias, read by a parent that fuses the matmuls itself."""
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  bias_dims: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    kernel = _param(self, 'kernel', self.shape, self.axes, _init, self.param_dtype)
    bias_shape = self.shape[-self.bias_dims:]
    bias = _param(self, 'bias', bias_shape, self.axes[-self.bias_dims:],
                  nn.initializers.zeros, self.param_dtype)
    return kernel, bias


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (bf16 statistics lose parity), cast back."""
  eps: float
  param_dtype: Any = jnp.float32
  dtype: Any = None  # output dtype; None = the input's

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = _param(self, 'scale', (features,), ('embed',), nn.initializers.ones,
                   self.param_dtype)
    bias = _param(self, 'bias', (features,), ('embed',), nn.initializers.zeros,
                  self.param_dtype)
    y = x.astype(jnp.float32)
    mean = y.mean(-1, keepdims=True)
    var = jnp.square(y - mean).mean(-1, keepdims=True)
    y = (y - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale + bias).astype(self.dtype or x.dtype)


class Embeddings(nn.Module):
  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, attention_mask, deterministic):
    cfg = self.config
    dtype, pdtype = cfg.compute_dtype, cfg.params_dtype

    def table(name, rows):
      return nn.Embed(rows, cfg.embed_size, dtype=dtype, param_dtype=pdtype, name=name,
                      embedding_init=nn.with_logical_partitioning(_init, ('vocab', 'embed')))

    x = table('word_embeddings', cfg.vocab_size)(input_ids)
    if cfg.position_offset:
      # RoBERTa: real tokens are numbered from pad_token_id + 1, padding gets pad_token_id.
      mask = attention_mask.astype(jnp.int32)
      positions = jnp.cumsum(mask, axis=1) * mask + cfg.pad_token_id
    else:
      positions = jnp.arange(input_ids.shape[1])[None, :]
    x = x + table('position_embeddings', cfg.max_position_embeddings)(positions)
    if cfg.type_vocab_size:
      x = x + table('token_type_embeddings', cfg.type_vocab_size)(token_type_ids)
    x = LayerNorm(cfg.layer_norm_eps, pdtype, name='layer_norm')(x)
    x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    if cfg.embed_size != cfg.hidden_size:
      x = nn.Dense(cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
                   kernel_init=nn.with_logical_partitioning(_init, ('embed_in', 'embed')),
                   name='projection')(x)
    return x.astype(dtype)


class Attention(nn.Module):
  """Multi-head self-attention with a padding mask; Q, K and V in one matmul."""
  config: EncoderConfig
  num_heads: int

  @nn.compact
  def __call__(self, x, bias, deterministic, output_attentions):
    cfg = self.config
    n, d, hidden = self.num_heads, cfg.head_dim, cfg.hidden_size
    dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
    qkv = [Weights((hidden, n, d), ('embed', 'heads', 'kv'), 2, pdtype, name=name)()
           for name in ('query', 'key', 'value')]
    out_kernel, out_bias = Weights((n, d, hidden), ('heads', 'kv', 'embed'), 1, pdtype,
                                   name='out')()
    if n == 0:  # every head pruned: the block reduces to its output bias
      return jnp.broadcast_to(out_bias.astype(jnp.float32), x.shape), None

    # One matmul for Q, K and V, as a plain 2-D product: kernel [hidden, 3 * heads * d],
    # output [b, s, 3 * heads * d] -> [b, s, 3, heads, d]. Written with the (3, heads, d)
    # axes flattened so XLA:CPU cannot reorder them in the backward (it chose to
    # transpose the cotangent to [b, s, d, heads, 3], a 9 ms copy per layer).
    kernel = jnp.stack([k for k, _ in qkv], axis=1).reshape(hidden, 3 * n * d).astype(dtype)
    bias3 = jnp.stack([b for _, b in qkv]).reshape(3 * n * d)
    y = mixed_matmul.einsum('bsi,io->bso', x, kernel, bias=bias3)
    y = y.reshape(*x.shape[:2], 3, n, d)
    # -> three [batch, heads, length, d]; split (not indexing) so the backward is one
    # concatenation instead of three pad-and-add passes.
    q, k, v = (t[0] for t in jnp.split(y.transpose(2, 0, 3, 1, 4), 3, axis=0))
    # Scores, scale, mask and softmax in float32: bf16 exponentials lose too much.
    scores = mixed_matmul.einsum('bhqd,bhkd->bhqk', q, k, out_dtype=jnp.float32)
    scores = scores * jnp.float32(d ** -0.5) + bias
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    probs_out = probs if output_attentions else None
    probs = Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
    # Context stays [batch, heads, q, d]: asking the batched matmul for [b, q, h, d]
    # directly made XLA:CPU emit it transposed and copy it (2x slower, measured).
    ctx = mixed_matmul.einsum('bhqk,bhkd->bhqd', probs, v)
    # The output stays float32 for the residual add and LayerNorm that follow.
    out = mixed_matmul.einsum('bhqd,hde->bqe', ctx, out_kernel.astype(dtype), bias=out_bias,
                              out_dtype=jnp.float32)
    return out, probs_out


class Mlp(nn.Module):
  config: EncoderConfig
  width: int

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
    if self.width == 0:  # FFN pruned away entirely: only the output bias remains
      bias = _param(self, 'output_bias', (cfg.hidden_size,), ('embed',),
                    nn.initializers.zeros, pdtype)
      return jnp.broadcast_to(bias.astype(jnp.float32), x.shape)
    w_in, b_in = Weights((cfg.hidden_size, self.width), ('embed', 'mlp'), 1, pdtype,
                         name='intermediate')()
    w_out, b_out = Weights((self.width, cfg.hidden_size), ('mlp', 'embed'), 1, pdtype,
                           name='output')()
    # Bias and activation in float32 (one cast per matmul input); output float32 too.
    h = mixed_matmul.einsum('bsi,io->bso', x, w_in.astype(dtype), bias=b_in,
                            out_dtype=jnp.float32)
    h = activation(cfg.hidden_act)(h).astype(dtype)
    return mixed_matmul.einsum('bsi,io->bso', h, w_out.astype(dtype), bias=b_out,
                               out_dtype=jnp.float32)


class Layer(nn.Module):
  """Post-LayerNorm Transformer layer (BERT): x = LN(x + Attn(x)); x = LN(x + FFN(x))."""
  config: EncoderConfig
  num_heads: int
  ffn_width: int

  @nn.compact
  def __call__(self, x, bias, deterministic, output_attentions):
    cfg = self.config
    drop = Dropout(cfg.hidden_dropout)
    attn, probs = Attention(cfg, self.num_heads, name='attention')(
        x, bias, deterministic, output_attentions)
    x = LayerNorm(cfg.layer_norm_eps, cfg.params_dtype, cfg.compute_dtype, name='attention_norm')(
        x + drop(attn, deterministic=deterministic))
    y = Mlp(cfg, self.ffn_width, name='mlp')(x)
    x = LayerNorm(cfg.layer_norm_eps, cfg.params_dtype, cfg.compute_dtype, name='output_norm')(
        x + drop(y, deterministic=deterministic))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return x, probs


class Encoder(nn.Module):
  """The encoder. See the module docstring for parameter names and outputs."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, *, deterministic: bool = True,
               output_attentions: bool = False):
    """Encodes a batch of token ids.

    Args:
      input_ids: int [batch, length].
      attention_mask: 1 for real tokens, 0 for padding; defaults to all ones.
      token_type_ids: segment ids; ignored when the model has no token types.
      deterministic: disables dropout when True (evaluation).
      output_attentions: also return every layer's attention probabilities.

    Returns:
      `(last_hidden_state, intermediates)`: [batch, length, hidden] and a dict with
      'hidden_states' (num_layers + 1 arrays), 'attentions' (num_layers arrays of
      [batch, heads, length, length], when asked) and 'pooled' (with a pooler).
    """
    cfg = self.config
    if input_ids.shape[1] > cfg.max_length:
      raise ValueError(
          f'Sequence length {input_ids.shape[1]} exceeds the position table '
          f'({cfg.max_length} positions); truncate inputs to max_length={cfg.max_length}')
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = Embeddings(cfg, name='embeddings')(input_ids, token_type_ids, attention_mask,
                                           deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    # Additive mask, [batch, 1, 1, length]: padding keys get a large negative score.
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0,
                     jnp.finfo(jnp.float32).min).astype(jnp.float32)

    hidden_states, attentions = [x], []
    shared = (Layer(cfg, cfg.heads(0), cfg.ffn(0), name='shared_layer')
              if cfg.share_layers else None)
    for i in range(cfg.num_layers):
      layer = shared or Layer(cfg, cfg.heads(i), cfg.ffn(i), name=f'layer_{i}')
      x, probs = layer(x, bias, deterministic, output_attentions)
      hidden_states.append(x)
      attentions.append(probs)

    intermediates: dict[str, Any] = {'hidden_states': tuple(hidden_states)}
    if output_attentions:
      intermediates['attentions'] = tuple(attentions)
    if cfg.use_pooler:
      pooled = nn.Dense(cfg.hidden_size, dtype=cfg.compute_dtype,
                        param_dtype=cfg.params_dtype, name='pooler',
                        kernel_init=nn.with_logical_partitioning(_init, ('embed', 'embed_out')))(
                            x[:, 0])
      intermediates['pooled'] = jnp.tanh(pooled)
    return x, intermediates


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
