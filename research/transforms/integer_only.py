"""Integer-only inference (I-BERT): a fully quantized (QAT) model whose every matrix
product and non-linearity computes on integers.

    config = integer_only(qat_model_config)          # same params, integer arithmetic
    transform_run('runs/fq', 'runs/fq_int', 'integer_only')    # a saved run

A fully quantized run (`--config.quant=w8,a8 --config.quant_full`, `qat.py`) puts every
tensor that enters a product, softmax, GELU or LayerNorm on an integer grid and computes
on the dequantized values in float32: its *fake-quant twin*. `integer_only` keeps its
parameters and hooks and swaps the arithmetic through the seams:

  products   'fake_quant:SPEC' -> 'integer:SPEC', 'fake_quant_act:SPEC' ->
             'integer_act:SPEC': the same grids (same scales), int8 x int8 -> int32
             (`mixed_matmul.einsum`, u8 x s8 kernels on CPU), then the scales;
  nonlinear  each softmax, GELU and LayerNorm -> 'integer:<its input grid>':
             I-BERT's integer exp, GELU, mean / variance / square root
             (`integer_kernels.py`) on the integers of the grid its input hook set
             (recovered exactly: the same rule gives the same scale). The embedding
             LayerNorm, whose input (a sum of three table rows) has no grid in the
             twin, reads it on a 16-bit per-token grid.

What stays float32: the scales themselves (one per tensor or token, as the twin's
dynamic ranges are), the bias and residual adds of dequantized values, the pooler's
tanh and the task head's loss; tensors pass between operations dequantized (value =
integer x scale), as in I-BERT's reference implementation, so the integer model runs
on any backend and is checked against its twin element for element.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from research import specs
from research.models import hooks, mixed_matmul, nonlinear, products
from research.models.config import EncoderConfig
from research.transforms import integer_kernels as ik
from research.transforms.qat import QuantSpec

Array = jax.Array

# The embedding LayerNorm's input grid (it has none in the twin).
EMBEDDING_NORM_GRID = 'a16,token'


# -- Integer products ------------------------------------------------------------------

def _quantize(x: Array, bits: int, axes) -> tuple[Array, Array]:
  """int8 values and keepdims scales of `qat.fake_quant`'s symmetric grid (scales over
  `axes`; None = the whole tensor)."""
  q, scale = ik.grid(x, bits, axes=None if axes is None else tuple(axes))
  return q.astype(jnp.int8), scale


def _to_output(scale: Array, term: str, out: str) -> Array:
  """A keepdims scale of an operand with index string `term`, laid out to broadcast
  against the product's output `out` (contracted axes are size 1 and dropped)."""
  kept = [i for i in term if i in out]
  scale = scale.reshape([scale.shape[term.index(i)] for i in kept])
  order = sorted(range(len(kept)), key=lambda j: out.index(kept[j]))
  scale = jnp.transpose(scale, order)
  sizes = {kept[j]: scale.shape[n] for n, j in enumerate(order)}
  return scale.reshape([sizes.get(i, 1) for i in out])


def _contracted(term: str, other: str, out: str) -> list[int]:
  return [i for i, c in enumerate(term) if c in other and c not in out]


def _spec(text: str, weights: bool) -> QuantSpec:
  spec = QuantSpec.parse(text)
  bits = [spec.activation_bits] + ([spec.weight_bits] if weights else [])
  if spec.asymmetric or not all(2 <= b <= 8 for b in bits):
    raise ValueError(f'integer products need symmetric grids of 2..8 bits for int8 '
                     f'operands (e.g. w8,a8), got {text!r}')
  return spec


def _rescaled(einsum: str, left, right, bias, out_dtype):
  """The int32 product of two (int8 values, keepdims scales) grids, rescaled to float,
  plus the bias, in `out_dtype`."""
  a, b, out = mixed_matmul.parse_einsum(einsum)
  (qa, sa), (qb, sb) = left, right
  y = mixed_matmul.einsum(einsum, qa, qb).astype(jnp.float32)
  y = y * _to_output(sa, a, out) * _to_output(sb, b, out)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(out_dtype)


def projection_product(text: str) -> products.Product:
  """int8 x int8 -> int32 on the grids of `qat.projection_product(text)`: activations
  per tensor (or token), the kernel per output channel."""
  spec = _spec(text, weights=True)

  def product(einsum, lhs, rhs, *, bias=None, out_dtype=None):
    x_term, k_term, out = mixed_matmul.parse_einsum(einsum)
    axes = _contracted(x_term, k_term, out) if spec.per_token else None
    kernel_axes = _contracted(k_term, x_term, out)
    return _rescaled(einsum, _quantize(lhs, spec.activation_bits, axes),
                     _quantize(rhs, spec.weight_bits, kernel_axes), bias,
                     out_dtype or lhs.dtype)
  return product


def activation_product(text: str) -> products.Product:
  """int8 x int8 -> int32 on the grids of `qat.activation_product(text)` (attention
  scores and context: two activations)."""
  spec = _spec(text, weights=False)

  def product(einsum, lhs, rhs, *, bias=None, out_dtype=None):
    a, b, out = mixed_matmul.parse_einsum(einsum)
    grids = [_quantize(x, spec.activation_bits,
                       _contracted(t, o, out) if spec.per_token else None)
             for x, t, o in ((lhs, a, b), (rhs, b, a))]
    return _rescaled(einsum, *grids, bias, out_dtype or lhs.dtype)
  return product


products.register('integer', projection_product)
products.register('integer_act', activation_product)


# -- Integer non-linearities -----------------------------------------------------------

class IntegerNonlinear(nonlinear.Nonlinear):
  """I-BERT's integer softmax, GELU and LayerNorm on the grid `grid` names
  ('a<bits>[,token]', the input hook's spec): the input's integers are recovered on it,
  computed on in int32, and returned dequantized."""

  def __init__(self, grid: str):
    spec = QuantSpec.parse(grid)
    if spec.asymmetric or not 2 <= spec.activation_bits <= 16:
      raise ValueError(f'integer non-linearities read a symmetric grid of 2..16 bits '
                       f'(a<bits>[,token]), got {grid!r}')
    self.bits, self.per_token = spec.activation_bits, spec.per_token

  def softmax(self, scores, bias):
    q, scale = ik.grid(scores, self.bits, self.per_token)
    valid = jnp.broadcast_to(bias > jnp.finfo(jnp.float32).min / 2, q.shape)
    return ik.i_softmax(q, scale, valid).astype(jnp.float32) * 2.0 ** -ik.PROB_BITS

  def activation(self, name, x):
    q, scale = ik.grid(x, self.bits, self.per_token)
    if name == 'relu':
      return (jnp.maximum(q, 0).astype(jnp.float32) * scale).astype(x.dtype)
    if name not in ('gelu', 'gelu_tanh'):  # gelu_tanh: the same curve within 1e-3
      raise ValueError(f'no integer kernel for activation {name!r} (gelu, gelu_tanh, relu)')
    out, out_scale = ik.i_gelu(q, scale)
    return (out.astype(jnp.float32) * out_scale).astype(x.dtype)

  def layer_norm(self, x, scale, bias, eps):
    del eps  # below one unit of any grid (see ik.i_layer_norm)
    q, _ = ik.grid(x, self.bits, self.per_token)
    out, out_scale = ik.i_layer_norm(q, scale, bias, self.bits)
    return out.astype(jnp.float32) * out_scale


nonlinear.register('integer', IntegerNonlinear)


# -- Conversion ------------------------------------------------------------------------

_PRODUCT_NAMES = {'fake_quant': 'integer', 'fake_quant_act': 'integer_act'}
# Each non-linearity's site (a regex below a layer) and the hook site of its input.
_NONLINEAR_INPUTS = (
    ('attention/softmax', 'attention/softmax_in', 'softmax'),
    ('mlp/activation', 'mlp/gelu_in', 'gelu'),
    ('attention_norm', 'attention_norm/input', 'layernorm'),
    ('output_norm', 'output_norm/input', 'layernorm'),
)


def _input_grid(config: EncoderConfig, site: str, group: str) -> str:
  spec = hooks.spec_at(config.hooks, site)
  name, argument = specs.name_arg(spec)
  if name != 'fake_quant':
    raise ValueError(
        f'integer_only: {site} is not fake-quantized (hook {spec!r}), so its integers are '
        f'unknown; convert a fully quantized run (--config.quant=w8,a8 --config.quant_full '
        f'with the {group!r} group in quant_full_sites)')
  return argument


def integer_only(config: EncoderConfig, prefix: str = 'encoder/') -> EncoderConfig:
  """The integer-only twin of a fully quantized encoder config (same parameters).

  Args:
    config: a config whose products are all fake-quantized ('fake_quant' /
      'fake_quant_act', symmetric, <= 8 bits) and whose softmax, GELU and LayerNorm
      inputs are fake-quantized by hooks (`qat.full_quant_rules`).
    prefix: the encoder's path in the model its rules were written for ('encoder/' in
      a task model, '' for a bare `Encoder`), used to read each site's hook.

  Raises:
    ValueError: naming the first product rule or site that is not fake-quantized.
  """
  rules = []
  for pattern, spec in config.products:
    name, argument = specs.name_arg(spec)
    if name not in _PRODUCT_NAMES:
      raise ValueError(
          f'integer_only: products rule ({pattern!r}, {spec!r}) is not fake-quantized; '
          'convert a fully quantized run (--config.quant=w8,a8 --config.quant_full)')
    _spec(argument, weights=name == 'fake_quant')
    rules.append((pattern, f'{_PRODUCT_NAMES[name]}:{argument}'))
  if not rules:
    raise ValueError('integer_only: the model has no fake-quantized products; convert a '
                     'fully quantized run (--config.quant=w8,a8 --config.quant_full)')
  functions = []
  for j in range(config.parameter_sets):
    for site, hook_site, group in _NONLINEAR_INPUTS:
      grid = _input_grid(config, f'{prefix}layer_{j}/{hook_site}', group)
      functions.append((f'(.*/)?layer_{j}/{site}', f'integer:{grid}'))
  if config.norm_position == 'pre':
    grid = _input_grid(config, f'{prefix}final_norm/input', 'layernorm')
    functions.append((r'(.*/)?final_norm', f'integer:{grid}'))
  functions.append((r'(.*/)?embeddings/layer_norm', f'integer:{EMBEDDING_NORM_GRID}'))
  for _, spec in functions:  # fail now on a grid the kernels cannot read
    nonlinear.NONLINEAR.make(spec)
  return config.replace(products=tuple(rules), nonlinear=tuple(functions))
