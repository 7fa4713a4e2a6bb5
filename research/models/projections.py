"""Projections that own their kernels: how a kernel is stored is the projection's business.

Every linear map of the encoder (Q, K, V, attention output, FFN in and out, pooler,
embedding projection) and of the task heads is a projection module. It holds its
parameters and performs its own product through the injected product of its site
(`products.py`), so a transform can change how a kernel is stored (dense, low-rank
factors, int8 values with scales, merged LoRA, ...) by naming another projection kind
for that site, without editing the encoder:

    config.replace(projections=(('.*/mlp/.*', 'low_rank:64'),))

A projection is described by an einsum `spec` whose left operand is the input and
whose right operand is the (logical) kernel, e.g. 'bsi,ihd->bshd' for a query
projection with a [hidden, heads, head_dim] kernel; the bias has the shape of the
kernel's output axes. `EncoderConfig.projections` is an ordered list of
`(site_regex, kind_spec)` rules over module paths (first full match wins; unmatched
sites are 'dense'; `rules.py`); `register(name, factory)` adds a kind.

Kinds here:
  dense       kernel [in axes..., out axes...] and bias (the pre-trained layout).
  low_rank:R  the kernel as a product of two factors, `a` [in axes..., R] and
              `b` [R, out axes...], applied as two products (fewer FLOPs when R is
              below in * out / (in + out)). With R = min(in, out) and factors from an
              SVD it reproduces the dense output.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import mixed_matmul, products
from research.models.rules import Registry, Rules

Array = jax.Array
default_init = nn.initializers.truncated_normal(stddev=0.02)


def parse_spec(spec: str) -> tuple[str, str, str]:
  """(input indices, kernel indices, output indices) of a projection's einsum."""
  return mixed_matmul.parse_einsum(spec)


def kernel_axes_split(spec: str) -> tuple[str, str]:
  """(contracted, output) index letters of the kernel, each in kernel order."""
  x, kernel, out = parse_spec(spec)
  contracted = ''.join(i for i in kernel if i in x and i not in out)
  free = ''.join(i for i in kernel if i in out)
  if contracted + free != kernel:
    raise ValueError(f'projection spec {spec!r}: the kernel must list its input axes '
                     'before its output axes')
  return contracted, free


def cast(x, dtype):
  """`x.astype(dtype)` only when the dtype differs: a no-op cast is left out, so array
  stand-ins of a quantization library (which may not implement `astype`) pass through."""
  return x if x.dtype == jnp.dtype(dtype) else x.astype(dtype)


def logical_param(module: nn.Module, name: str, shape, axes, init, dtype):
  """`module.param(name, ...)` with logical axis names (the sharding rules read them)."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                      dtype)


class Projection(nn.Module):
  """Fields shared by every projection kind (see the module docstring).

  Attributes:
    spec: einsum 'input,kernel->output' of the logical dense product.
    kernel_shape: the logical dense kernel's shape (input axes, then output axes).
    kernel_axes: logical axis names of `kernel_shape` (for sharding rules).
    products: the model's product rules; the site is this module's path.
    use_bias: whether a bias over the kernel's output axes is added.
    dtype: compute dtype of the inputs to the product.
    out_dtype: dtype of the result (None = `dtype`).
    param_dtype: dtype the parameters are stored in.
    kernel_init: initializer of the dense kernel (or its factors).
  """
  spec: str
  kernel_shape: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  products: tuple[tuple[str, str], ...] = ()
  use_bias: bool = True
  dtype: Any = jnp.float32
  out_dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_init
  # The params that tell this kind's storage apart (`densify` converts a site holding them).
  STORED = ('kernel',)

  @property
  def site(self) -> str:
    return '/'.join(str(p) for p in self.scope.path)

  def product(self) -> products.Product:
    return products.product_at(self.products, self.site)

  def _split(self) -> tuple[int, int]:
    """(number of contracted kernel axes, number of output axes)."""
    contracted, free = kernel_axes_split(self.spec)
    return len(contracted), len(free)

  @staticmethod
  def dense_params(params: dict, **kind_fields) -> dict:
    """This kind's stored params as a dense projection's {'kernel'[, 'bias']} (numpy);
    what the dense kernel cannot hold (an activation grid, say) is dropped.
    `kind_fields` are the kind spec's own fields (LoRA's rank and alpha)."""
    del kind_fields
    return dict(params)

  def bias_param(self) -> Array | None:
    if not self.use_bias:
      return None
    n_in, _ = self._split()
    return logical_param(self, 'bias', self.kernel_shape[n_in:], self.kernel_axes[n_in:],
                  nn.initializers.zeros, self.param_dtype)


class Dense(Projection):
  """The dense kernel, stored as given (params 'kernel', 'bias')."""

  @nn.compact
  def weights(self) -> tuple[Array, Array | None]:
    """(kernel, bias) as stored, for a parent that fuses several products into one."""
    kernel = logical_param(self, 'kernel', self.kernel_shape, self.kernel_axes, self.kernel_init,
                    self.param_dtype)
    return kernel, self.bias_param()

  @staticmethod
  def fused(modules: Sequence['Dense'], x: Array, out_dtype) -> Array:
    """The products of several [in, out...] projections of one input x [b, s, in] as one
    2-D product: [b, s, sum of their flattened outputs] (their sites share one product)."""
    weights = [m.weights() for m in modules]
    first = modules[0]
    for m in modules[1:]:
      m.product()  # each site is looked up (and recorded); they share one product
    kernel = jnp.concatenate([k.reshape(k.shape[0], -1) for k, _ in weights], axis=1)
    bias = None
    if all(b is not None for _, b in weights):
      bias = jnp.concatenate([b.reshape(-1) for _, b in weights])
    return first.product()('bsi,io->bso', cast(x, first.dtype), cast(kernel, first.dtype),
                           bias=bias, out_dtype=out_dtype)

  def __call__(self, x: Array) -> Array:
    kernel, bias = self.weights()
    return self.product()(self.spec, cast(x, self.dtype), cast(kernel, self.dtype),
                          bias=bias, out_dtype=self.out_dtype or self.dtype)


class LowRank(Projection):
  """The kernel as two factors a [in axes..., rank] and b [rank, out axes...]."""
  rank: int = 0
  STORED = ('a', 'b')

  @nn.compact
  def __call__(self, x: Array) -> Array:
    contracted, free = kernel_axes_split(self.spec)
    n_in = len(contracted)
    fan_in = math.prod(self.kernel_shape[:n_in])
    fan_out = math.prod(self.kernel_shape[n_in:])
    if not 1 <= self.rank <= min(fan_in, fan_out):
      raise ValueError(f'{self.site}: low_rank rank {self.rank} must be in 1..'
                       f'{min(fan_in, fan_out)} for a {fan_in} x {fan_out} kernel')
    # Factors keep the kernel's axis names; the rank axis is unsharded.
    a = logical_param(self, 'a', self.kernel_shape[:n_in] + (self.rank,),
               self.kernel_axes[:n_in] + ('rank',), self.kernel_init, self.param_dtype)
    b = logical_param(self, 'b', (self.rank,) + self.kernel_shape[n_in:],
               ('rank',) + self.kernel_axes[n_in:], self.kernel_init, self.param_dtype)
    bias = self.bias_param()
    x_idx, _, out_idx = parse_spec(self.spec)
    r = next(c for c in 'rzyxwvu' if c not in self.spec)
    mid = ''.join(i for i in x_idx if i not in contracted) + r
    product = self.product()
    h = product(f'{x_idx},{contracted}{r}->{mid}', cast(x, self.dtype), cast(a, self.dtype),
                out_dtype=self.dtype)
    return product(f'{mid},{r}{free}->{out_idx}', h, cast(b, self.dtype), bias=bias,
                   out_dtype=self.out_dtype or self.dtype)

  @staticmethod
  def dense_params(params: dict, **kind_fields) -> dict:
    kernel = np.tensordot(np.asarray(params['a'], np.float32),
                          np.asarray(params['b'], np.float32), axes=1)
    return {'kernel': kernel, **({'bias': params['bias']} if 'bias' in params else {})}


# A kind's factory returns `{'cls': ProjectionSubclass, **extra_fields}`.
KINDS: Registry[dict] = Registry('projection kind', 'projections', fallback='dense')
KINDS.register('dense', lambda arg: {'cls': Dense})
KINDS.register('low_rank', lambda arg: {'cls': LowRank, 'rank': int(arg)})
# The registry's methods under the names other modules use.
register = KINDS.register  # register(name, factory): kind `name` for config.projections
kind_at = KINDS.spec_at  # kind_at(rules, site) -> kind spec; unmatched sites are 'dense'


def kind_class(spec: str) -> type[Projection]:
  """The module class of a kind spec such as 'low_rank:64'."""
  return KINDS.make(spec)['cls']


def make(rules: Rules, site: str, **fields: Any) -> Projection:
  """The projection module for `site` under `rules`, built with `fields`.

  Args:
    rules: `EncoderConfig.projections`.
    site: the module path the projection will have (its parent's path + its name).
    **fields: `Projection` fields and the module `name`.
  """
  try:
    kind = KINDS.make(kind_at(rules, site))
  except ValueError as e:
    raise ValueError(f'{site}: {e}') from e
  # The cached kind is shared: read it, never pop from it.
  extra = {k: v for k, v in kind.items() if k != 'cls'}
  return kind['cls'](**fields, **extra)


def densify(rules: Rules, params: Mapping[str, Any]) -> dict:
  """Params with every non-dense projection converted to a dense kernel and bias.

  Args:
    rules: the projection rules the params were built under.
    params: a params tree whose paths are the sites the rules match (an encoder's, or a
      model's holding the encoder, as the model was applied).

  Used where only dense kernels can go (a Hugging Face folder); pair it with the rules
  emptied: `config.replace(projections=())`.
  """
  def walk(tree, path):
    if not isinstance(tree, Mapping):
      return tree
    site = '/'.join(path)
    spec = kind_at(rules, site) if path else 'dense'
    if spec != 'dense' and not any(isinstance(v, Mapping) for v in tree.values()):
      kind = dict(KINDS.make(spec))
      cls = kind.pop('cls')
      if set(cls.STORED) <= set(tree):  # a broad rule may match other modules' params
        return cls.dense_params(dict(tree), **kind)
    return {k: walk(v, path + [k]) for k, v in tree.items()}
  return walk(nn.meta.unbox(params), [])


def site_of(parent: nn.Module, name: str) -> str:
  """The path a child called `name` of `parent` will have."""
  return '/'.join([str(p) for p in parent.scope.path] + [name])
