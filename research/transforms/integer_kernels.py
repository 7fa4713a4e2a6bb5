"""I-BERT's integer-only non-linearities (Kim et al. 2021) on int32 values.

    q, s = grid(x, bits=8)                    # the fake-quant grid: x == q * s
    g, gs = i_gelu(q, s)                      # GELU(x) ~ g * gs, g int32
    p = i_softmax(q, s, valid)                # softmax ~ p / 2**PROB_BITS, p int32
    y, ys = i_layer_norm(q, gamma, beta)      # LayerNorm(x) * gamma + beta ~ y * ys

Every element-wise step is int32 arithmetic (adds, multiplies, shifts, integer
division, comparisons); a value is an int32 `q` with a float32 scale `s` (one per tensor
or per token) that says what one unit is worth. The scales enter only as constants:
the polynomials' coefficients in units of `s` (I-BERT computes them once from static
scales; here scales are the dynamic per-batch ones of the fake-quant twin, so each
constant is one float operation per tensor or token, not per element).

- GELU: erf by a clipped second-order polynomial, sign(x) [a (min(|x|, -b) + b)^2 + 1]
  with a = -0.2888, b = -1.769 (I-BERT's fit).
- exp: x = -z ln2 + p with p in (-ln2, 0], exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344, and
  exp(x) = exp(p) >> z.
- LayerNorm: an integer mean, the integer square root (Newton's method) of the summed
  squares, an integer division, and gamma / beta quantized to 14 bits.

Before a polynomial, the input is moved to a finer power-of-two scale (a shift, exact)
so the integer coefficients carry enough digits without overflowing int32; each
function's comments give the bound it keeps.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from research.transforms import qat

Array = jax.Array

PROB_BITS = 15  # softmax probabilities are int32 in units of 2**-15
_GAMMA_BITS = 14  # LayerNorm gamma: |q_gamma| < 2**14, so |y * q_gamma| < 2**29


def grid(x: Array, bits: int, per_token: bool = False, axes=None) -> tuple[Array, Array]:
  """(q int32, scale) of the symmetric `bits`-bit grid `qat.fake_quant` uses: scale =
  max|x| / (2^(bits-1) - 1) over the tensor (the last axis with `per_token`, or the
  given `axes`), q = round(x / scale). On a tensor the twin already fake-quantized with
  the same rule, q is recovered exactly (the maxima agree)."""
  xf = x.astype(jnp.float32)
  if axes is None:
    axes = (-1,) if per_token else tuple(range(x.ndim))
  scale = qat.symmetric_scale(xf, bits, axes)
  return jnp.round(xf / scale).astype(jnp.int32), scale


def shift(q: Array, k: Array) -> Array:
  """q * 2^k for integer k of either sign (a negative k rounds to nearest)."""
  k = jnp.asarray(k, jnp.int32)
  up = jnp.left_shift(q, jnp.maximum(k, 0))
  down = -k
  half = jnp.where(down > 0, jnp.left_shift(1, jnp.maximum(down - 1, 0)), 0)
  return jnp.where(k >= 0, up, jnp.right_shift(q + half, jnp.maximum(down, 0)))


def _finer(scale: Array, target: Array | float) -> tuple[Array, Array]:
  """(k, scale / 2^k): the power-of-two refinement of `scale` nearest above `target`
  (k may be negative when the scale is already finer; |k| <= 24)."""
  k = jnp.clip(jnp.floor(jnp.log2(scale / target)), -24, 24).astype(jnp.int32)
  return k, scale / jnp.exp2(k.astype(jnp.float32))


def _floor_const(value: Array) -> Array:
  return jnp.floor(value).astype(jnp.int32)


# -- GELU ------------------------------------------------------------------------------

_ERF_A, _ERF_B = -0.2888, -1.769


def i_gelu(q: Array, scale: Array) -> tuple[Array, Array]:
  """GELU(q * scale) ~ out * out_scale with out int32 (I-BERT's i-GELU).

  GELU(x) = x (1 + erf(x / sqrt 2)) / 2; erf(u) ~ sign(u) [a (min(|u|, -b) + b)^2 + 1].
  In units s of u: q_b = floor(b / s), q_c = floor(1 / (a s^2)), L = sign(q) [(min(|q|,
  -q_b) + q_b)^2 + q_c] with scale a s^2, and q (L + floor(1 / (a s^2))) is the GELU
  with scale x_scale a s^2 / 2. |L + q_1| <= 13.9 / x_scale^2 and |q| <= 127 * 2^k, so
  the input is refined by 2^k with 1759 * 8^k / scale^2 < 2^30 (no overflow).
  """
  qmax = jnp.max(jnp.abs(q), axis=tuple(range(q.ndim)), keepdims=True)
  qmax = jnp.maximum(qmax, 1).astype(jnp.float32)
  # The bound with the tensor's own largest |q| (127 for an 8-bit grid).
  budget = 2.0 ** 30 * jnp.square(scale) / (qmax * 13.86)
  k = jnp.clip(jnp.floor(jnp.log2(budget) / 3), -24, 24).astype(jnp.int32)
  q = shift(q, k)
  s = scale / jnp.exp2(k.astype(jnp.float32))
  su = s / math.sqrt(2.0)  # the units of u = x / sqrt 2
  q_b = _floor_const(_ERF_B / su)
  q_c = _floor_const(1.0 / (_ERF_A * jnp.square(su)))
  clipped = jnp.minimum(jnp.abs(q), -q_b) + q_b
  erf_q = jnp.sign(q) * (clipped * clipped + q_c)
  erf_scale = _ERF_A * jnp.square(su)
  one = _floor_const(1.0 / erf_scale)
  return q * (erf_q + one), s * erf_scale / 2


# -- Softmax ---------------------------------------------------------------------------

_EXP_A, _EXP_B, _EXP_C = 0.3585, 1.353, 0.344
# The exponential's integer value at 0, (b^2 + c / a) / s^2, is about 2^22 at this unit:
# fine enough digits for ln 2 (about 850 units) and no overflow in the square.
_EXP_UNIT = math.sqrt((_EXP_B ** 2 + _EXP_C / _EXP_A) / 2.0 ** 22)


def i_exp(q: Array, scale: Array) -> Array:
  """exp(q * scale) for q <= 0, as int32 in units of 0.3585 s^2 (s the refined scale;
  the unit cancels in a softmax). exp(0) is about 2^22."""
  k, s = _finer(scale, _EXP_UNIT)
  q = shift(q, k)
  q_ln2 = jnp.maximum(_floor_const(math.log(2.0) / s), 1)
  q_b = _floor_const(_EXP_B / s)
  q_c = _floor_const(_EXP_C / (_EXP_A * jnp.square(s)))
  z = jnp.minimum((-q) // q_ln2, 30)
  p = jnp.maximum(q + z * q_ln2, -q_ln2)  # in (-ln2, 0] (clamped once z hits 30)
  return jnp.right_shift((p + q_b) * (p + q_b) + q_c, z)


def i_softmax(q: Array, scale: Array, valid: Array) -> Array:
  """softmax over the last axis of q * scale at `valid` keys (0 elsewhere), as int32 in
  units of 2^-PROB_BITS. Exponentials (<= 2^22) drop 7 bits before the sum, so a row of
  up to 65536 keys sums below 2^31 and e << 15 stays below 2^30."""
  low = jnp.iinfo(jnp.int32).min // 2
  top = jnp.max(jnp.where(valid, q, low), axis=-1, keepdims=True)
  x = jnp.where(valid, q - top, 0)
  e = jnp.where(valid, jnp.right_shift(i_exp(x, scale), 7), 0)
  total = jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1)
  return (jnp.left_shift(e, PROB_BITS) + total // 2) // total


# -- LayerNorm -------------------------------------------------------------------------


def isqrt(n: Array) -> Array:
  """floor(sqrt(n)) of int32 n >= 0 by Newton's method from a power of two above the
  root (the iterates fall monotonically to the floor; 8 steps cover 31 bits)."""
  n = jnp.asarray(n, jnp.int32)
  bits = 32 - jax.lax.clz(n)
  x = jnp.left_shift(1, (bits + 1) // 2)  # >= sqrt(n)
  for _ in range(8):
    y = jnp.right_shift(x + n // jnp.maximum(x, 1), 1)
    x = jnp.minimum(x, y)
  return jnp.where(n > 0, x, 0)


def _ceil_log2(n: int) -> int:
  return max(0, math.ceil(math.log2(n)))


def layer_norm_plan(bits: int, features: int) -> dict[str, int]:
  """The shifts `i_layer_norm` uses for inputs of `bits` bits over `features` values:
  f fraction bits of the mean, t and s (even) right shifts before and after squaring,
  G left shift before the division; each keeps an intermediate below 2^31, and the
  normalized value's unit is sqrt(features) 2^-(G + s/2 + t) (|y| about 2^15 at most)."""
  log_n = _ceil_log2(features)
  f = max(0, min(8, 31 - log_n - bits))  # sum(q) * 2^f < 2^31
  c_bits = bits + f  # |c| < 2^c_bits
  t = max(0, c_bits - 15)  # (c >> t)^2 < 2^30
  s = max(0, 2 * (c_bits - t) + log_n - 30)
  s += s % 2  # even: the root of 2^s is exact
  g = min(30 - c_bits, 15 - s // 2 - t)
  if g < 0:
    raise ValueError(f'i_layer_norm: {bits}-bit inputs over {features} features leave no '
                     'bits for the quotient; use fewer input bits')
  return {'f': f, 't': t, 's': s, 'g': g}


def i_layer_norm(q: Array, gamma: Array, beta: Array, bits: int) -> tuple[Array, Array]:
  """LayerNorm over the last axis of q (int32, `bits`-bit values, any per-token scale:
  it cancels) times gamma plus beta, as (out int32, out_scale). Mean, variance, square
  root and division are integer; gamma is quantized to 14 bits and beta to the
  product's unit. LayerNorm's eps (1e-12 of the input's variance) is below one unit."""
  n = q.shape[-1]
  plan = layer_norm_plan(bits, n)
  f, t, s, g = plan['f'], plan['t'], plan['s'], plan['g']
  total = jnp.sum(q, axis=-1, keepdims=True)
  mean = (jnp.left_shift(total, f) + n // 2) // n  # rounded, in units of 2^-f
  c = jnp.left_shift(q, f) - mean
  ct = shift(c, -t)
  v = jnp.sum(jnp.right_shift(ct * ct, s), axis=-1, keepdims=True)
  sigma = jnp.maximum(isqrt(v), 1)
  y = jnp.left_shift(c, g) // sigma  # floor; |y| <~ 2^15
  y_scale = math.sqrt(n) * 2.0 ** -(g + s // 2 + t)
  gamma = gamma.astype(jnp.float32)
  g_scale = jnp.max(jnp.abs(gamma)) / (2.0 ** _GAMMA_BITS - 1)
  g_scale = jnp.where(g_scale > 0, g_scale, 1.0)
  q_gamma = jnp.round(gamma / g_scale).astype(jnp.int32)
  out_scale = y_scale * g_scale
  q_beta = jnp.clip(jnp.round(beta.astype(jnp.float32) / out_scale),
                    -2.0 ** 30, 2.0 ** 30).astype(jnp.int32)
  return y * q_gamma + q_beta, out_scale
