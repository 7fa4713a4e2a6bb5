"""LoRA (Hu et al., 2021): a frozen kernel plus a trained low-rank update, as a projection kind.

    --config.lora.rank=8 [--config.lora.alpha=16] [--config.lora.targets='.*/attention/(query|value)']

A projection of kind `lora:R[:ALPHA]` (`research/models/projections.py`) holds the
pre-trained dense `kernel` and `bias` and two factors, `lora_a` [in axes..., R]
(Gaussian, std 1/sqrt(fan in)) and `lora_b` [R, out axes...] (zeros), and computes

    y = x W + b + (ALPHA / R) (x A) B

so a fresh adapter reproduces the pre-trained model exactly. As the trainer technique
`LORA` (`config.lora.rank` > 0): the sites matching `config.lora.targets` get the kind,
the factors are initialised fresh on top of the loaded checkpoint (they are the only
params a pre-trained folder lacks), and only the factors train in the encoder (the
head and layer mix train as usual; with a freeze preset other than 'full' that preset
decides the rest, e.g. 'bitfit' also trains the encoder's biases). Frozen params hold
no optimizer state, so AdamW keeps moments for the factors alone.

Merge on export: `dense_params` gives `W + (ALPHA / R) A B`, which is what
`projections.densify` (Hugging Face export, `research/runs/export.py`) writes, so an
exported LoRA run is a plain model of the base architecture. A run that keeps its
adapters (model.json names the `lora` kind) restores as itself for `init_from`.
"""
from __future__ import annotations

import math
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research import specs
from research.models import projections
from research.transforms.technique import Technique

# Hu et al. adapt the query and value projections.
DEFAULT_TARGETS = r'.*/attention/(query|value)'
FACTORS = r'.*/lora_(a|b)'


def parse_kind(argument: str) -> tuple[int, float]:
  """'8' -> (8, 8.0); '8:16' -> (8, 16.0): the rank and alpha of `lora:R[:ALPHA]`."""
  rank_text, _, alpha_text = argument.partition(':')
  rank = specs.int_arg(f'lora:{rank_text}', 'projection kind')
  if rank < 1:
    raise ValueError(f'lora:{argument}: the rank must be >= 1')
  try:
    alpha = float(alpha_text) if alpha_text else float(rank)
  except ValueError:
    raise ValueError(f'lora:{argument}: alpha {alpha_text!r} is not a number') from None
  return rank, alpha


def _factor_specs(spec: str, rank_letter: str) -> tuple[str, str]:
  """The einsums x -> x A [..., R] and (x A) -> (x A) B of a projection spec."""
  x_idx, _, out_idx = projections.parse_spec(spec)
  contracted, free = projections.kernel_axes_split(spec)
  mid = ''.join(i for i in x_idx if i not in contracted) + rank_letter
  return f'{x_idx},{contracted}{rank_letter}->{mid}', f'{mid},{rank_letter}{free}->{out_idx}'


class LoRA(projections.Projection):
  """The dense kernel and bias (frozen by the technique) plus factors A and B."""
  rank: int = 8
  alpha: float = 8.0
  STORED = ('kernel', 'lora_a', 'lora_b')

  @nn.compact
  def __call__(self, x):
    n_in, _ = self._split()
    fan_in = math.prod(self.kernel_shape[:n_in])
    fan_out = math.prod(self.kernel_shape[n_in:])
    if self.rank > min(fan_in, fan_out):
      raise ValueError(f'{self.site}: lora rank {self.rank} exceeds min({fan_in}, {fan_out})')
    kernel = projections.logical_param(self, 'kernel', self.kernel_shape, self.kernel_axes,
                               self.kernel_init, self.param_dtype)
    bias = self.bias_param()
    a = projections.logical_param(self, 'lora_a', self.kernel_shape[:n_in] + (self.rank,),
                          self.kernel_axes[:n_in] + ('rank',),
                          nn.initializers.normal(1.0 / math.sqrt(fan_in)), jnp.float32)
    b = projections.logical_param(self, 'lora_b', (self.rank,) + self.kernel_shape[n_in:],
                          ('rank',) + self.kernel_axes[n_in:], nn.initializers.zeros,
                          jnp.float32)
    product = self.product()
    out_dtype = self.out_dtype or self.dtype
    x = projections.cast(x, self.dtype)
    y = product(self.spec, x, projections.cast(kernel, self.dtype), bias=bias,
                out_dtype=jnp.float32)
    first, second = _factor_specs(self.spec, next(c for c in 'rzyxwvu' if c not in self.spec))
    h = product(first, x, projections.cast(a, self.dtype), out_dtype=self.dtype)
    delta = product(second, h, projections.cast(b, self.dtype), out_dtype=jnp.float32)
    return (y + (self.alpha / self.rank) * delta).astype(out_dtype)

  @staticmethod
  def dense_params(params: dict, *, rank: int = 8, alpha: float = 8.0) -> dict:
    """The merged kernel W + (alpha / R) A B and the bias (merge on export)."""
    a = np.asarray(params['lora_a'], np.float32)
    b = np.asarray(params['lora_b'], np.float32)
    kernel = np.asarray(params['kernel'], np.float32)
    kernel = kernel + (alpha / rank) * np.tensordot(a, b, axes=1).reshape(kernel.shape)
    kernel = kernel.astype(np.asarray(params['kernel']).dtype)
    return {'kernel': kernel, **({'bias': params['bias']} if 'bias' in params else {})}


def _kind(argument: str) -> dict:
  rank, alpha = parse_kind(argument)
  return {'cls': LoRA, 'rank': rank, 'alpha': alpha}


projections.register('lora', _kind)


class LowRankAdaptation(Technique):
  """`config.lora.rank` > 0: LoRA adapters on the `config.lora.targets` projections."""
  name = 'lora'
  config_keys = ('lora',)

  def active(self, config) -> bool:
    return bool(config.lora.rank)

  def check(self, config) -> None:
    c = config.lora
    if not isinstance(c.rank, int) or c.rank < 0:
      raise ValueError(f'config.lora.rank must be an int >= 0 (0 = off), got {c.rank!r}')
    if c.alpha <= 0:
      raise ValueError(f'config.lora.alpha must be positive, got {c.alpha}')
    try:
      re.compile(c.targets)
    except re.error as e:
      raise ValueError(f'config.lora.targets={c.targets!r} is not a valid regex: {e}') from None

  def encoder(self, config, encoder_config):
    rule = (config.lora.targets, f'lora:{config.lora.rank}:{config.lora.alpha:g}')
    return encoder_config.replace(projections=(rule,) + tuple(encoder_config.projections))

  def new_params(self, config) -> str:
    return FACTORS

  def freeze_rules(self, config, rules):
    own = [(FACTORS, 'train')]
    if config.freeze == 'full':  # the default: LoRA decides that the encoder is frozen
      own.append(('encoder/.*', 'freeze'))
    return own + list(rules)


TECHNIQUE = LowRankAdaptation()
