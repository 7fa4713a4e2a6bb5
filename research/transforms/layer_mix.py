"""Layer mixing: which of the encoder's hidden states feed the task head.

The encoder returns its per-layer hidden states as a tuple of ``L + 1`` arrays of
shape ``[batch, seq, hidden]``: index 0 is the embedding output, index ``L`` the
top layer. Everything here maps that tuple (plus an optional ``[batch, seq]``
padding mask, 1 = real token) to one ``[batch, seq, features]`` array.

Pure functions: :func:`static_embeddings`, :func:`top_layer`, and the factories
:func:`select_layer` and :func:`concat_last_k`, which return such functions;
:func:`scalar_mix` is the ELMo mix as a pure function of its two parameters.

Linen modules with the uniform signature ``module(hidden_states, mask=None)``:
:class:`SelectLayer`, :class:`ConcatLastK` (no parameters) and :class:`ScalarMix`
(params ``weights`` of shape ``(L + 1,)`` and scalar ``gamma``). Build one from a
string with :func:`make_layer_mix`; a task model names it ``'layer_mix'`` so the
scalar mix's params live at ``params['layer_mix']``.

Example:
  >>> hs = tuple(jnp.full((2, 3, 4), float(i)) for i in range(5))  # L = 4
  >>> mix = make_layer_mix('scalar_mix', num_layers=4)
  >>> variables = mix.init(jax.random.PRNGKey(0), hs)
  >>> float(mix.apply(variables, hs)[0, 0, 0])  # uniform weights: mean of 0..4
  2.0
"""
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

HiddenStates = Sequence[jax.Array]
LayerMixFn = Callable[[HiddenStates], jax.Array]

VALID_SPECS = ('embeddings', 'top', 'layer:<i>', 'last:<k>', 'scalar_mix',
               'scalar_mix_norm')
_LN_EPS = 1e-12  # as in AllenNLP's ScalarMix


def _check_index(index: int, num_states: int) -> int:
  """Returns the non-negative index, or raises a ValueError if out of range."""
  if not -num_states <= index < num_states:
    raise ValueError(
        f'layer index {index} is out of range for {num_states} hidden states '
        f'(valid: {-num_states}..{num_states - 1}; 0 = embeddings, '
        f'{num_states - 1} = top layer).')
  return index % num_states


def _check_k(k: int, num_states: int) -> None:
  if not 1 <= k <= num_states:
    raise ValueError(
        f'concat_last_k: k={k} must be in 1..{num_states} '
        f'(there are {num_states} hidden states).')


def static_embeddings(hidden_states: HiddenStates) -> jax.Array:
  """Returns the embedding output (hidden state 0), i.e. no contextualisation."""
  return hidden_states[0]


def top_layer(hidden_states: HiddenStates) -> jax.Array:
  """Returns the top encoder layer's output (the usual fine-tuning choice)."""
  return hidden_states[-1]


def select_layer(index: int) -> LayerMixFn:
  """Returns a function picking hidden state ``index`` (negative counts from top).

  Args:
    index: 0 = embeddings, ``L`` or -1 = top layer, -2 = second to top, ...
  Returns:
    ``fn(hidden_states) -> [batch, seq, hidden]``; it raises a ValueError when
    ``index`` is out of range for the tuple it gets.

  Example: ``select_layer(-2)(hs) is hs[-2]``.
  """
  def fn(hidden_states: HiddenStates) -> jax.Array:
    return hidden_states[_check_index(index, len(hidden_states))]
  return fn


def concat_last_k(k: int) -> LayerMixFn:
  """Returns a function concatenating the top ``k`` hidden states on features.

  Args:
    k: number of top hidden states, 1..L+1 (BERT paper's feature-based NER
      used the last 4).
  Returns:
    ``fn(hidden_states) -> [batch, seq, k * hidden]``, lower layers first.

  Example: ``concat_last_k(4)(hs).shape[-1] == 4 * hs[0].shape[-1]``.
  """
  def fn(hidden_states: HiddenStates) -> jax.Array:
    _check_k(k, len(hidden_states))
    return jnp.concatenate(list(hidden_states[-k:]), axis=-1)
  return fn


def _masked_layer_norm(h: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Normalises ``h`` by one mean/variance over all non-padding positions.

  As AllenNLP's ``ScalarMix._do_layer_norm``: statistics are taken over every
  unmasked (batch, seq) position and every feature together, not per token.
  """
  h32 = h.astype(jnp.float32)
  if mask is None:
    mask = jnp.ones(h.shape[:-1], jnp.float32)
  m = mask.astype(jnp.float32)[..., None]
  count = jnp.maximum(jnp.sum(m) * h.shape[-1], 1.0)
  mean = jnp.sum(h32 * m) / count
  var = jnp.sum(((h32 - mean) * m) ** 2) / count
  return (h32 - mean) / jnp.sqrt(var + _LN_EPS)


def scalar_mix(weights: jax.Array, gamma: jax.Array,
               hidden_states: HiddenStates, mask: Optional[jax.Array] = None,
               do_layer_norm: bool = False) -> jax.Array:
  """ELMo scalar mix: ``gamma * sum_j softmax(weights)_j * norm(h_j)``.

  Args:
    weights: unnormalised layer weights, shape ``(L + 1,)``.
    gamma: scalar scale.
    hidden_states: tuple of ``L + 1`` arrays ``[batch, seq, hidden]``.
    mask: optional ``[batch, seq]`` padding mask (1 = token); only used for the
      layer-norm statistics (padding positions are still mixed, not zeroed).
    do_layer_norm: normalise each layer first (statistics over non-padding
      tokens only; over all tokens when ``mask`` is None).
  Returns:
    ``[batch, seq, hidden]`` in the dtype of ``hidden_states[0]``.

  Example: ``scalar_mix(jnp.zeros(L + 1), 1.0, hs)`` is the mean of the layers.
  """
  if weights.shape != (len(hidden_states),):
    raise ValueError(f'scalar_mix: weights have shape {weights.shape} but there '
                     f'are {len(hidden_states)} hidden states.')
  probs = jax.nn.softmax(weights.astype(jnp.float32))
  out = jnp.zeros(hidden_states[0].shape, jnp.float32)
  for p, h in zip(probs, hidden_states):
    h = _masked_layer_norm(h, mask) if do_layer_norm else h.astype(jnp.float32)
    out = out + p * h
  return (gamma * out).astype(hidden_states[0].dtype)


class SelectLayer(nn.Module):
  """Picks one hidden state (see :func:`select_layer`); has no parameters."""
  index: int = -1

  def __call__(self, hidden_states: HiddenStates,
               mask: Optional[jax.Array] = None) -> jax.Array:
    del mask
    return select_layer(self.index)(hidden_states)


class ConcatLastK(nn.Module):
  """Concatenates the top ``k`` hidden states (see :func:`concat_last_k`)."""
  k: int = 4

  def __call__(self, hidden_states: HiddenStates,
               mask: Optional[jax.Array] = None) -> jax.Array:
    del mask
    return concat_last_k(self.k)(hidden_states)


class ScalarMix(nn.Module):
  """ELMo scalar mix with params ``weights`` (L+1,) = 0 and ``gamma`` () = 1.

  At init the softmax is uniform, so the output is the mean of the layers.
  """
  do_layer_norm: bool = False

  @nn.compact
  def __call__(self, hidden_states: HiddenStates,
               mask: Optional[jax.Array] = None) -> jax.Array:
    weights = self.param('weights', nn.initializers.zeros_init(),
                         (len(hidden_states),), jnp.float32)
    gamma = self.param('gamma', nn.initializers.ones_init(), (), jnp.float32)
    return scalar_mix(weights, gamma, hidden_states, mask, self.do_layer_norm)


def _parse_int(spec: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'layer mix spec {spec!r}: {value!r} is not an integer. '
                     f'Valid specs: {", ".join(VALID_SPECS)}.') from None


def make_layer_mix(spec: str, num_layers: Optional[int] = None,
                   name: Optional[str] = None) -> nn.Module:
  """Builds the layer-mix module named by ``spec``.

  Args:
    spec: one of 'embeddings', 'top', 'layer:<i>' (negative allowed),
      'last:<k>' (concatenate top k), 'scalar_mix', 'scalar_mix_norm'
      (scalar mix with masked per-layer layer norm).
    num_layers: encoder depth L; when given, 'layer:<i>' and 'last:<k>' are
      range-checked now rather than at the first call.
    name: linen name for the module (a task model would use 'layer_mix').
  Returns:
    A linen module called as ``module(hidden_states, mask=None)``.
  Raises:
    ValueError: unknown spec, non-integer argument or out-of-range layer.

  Example: ``make_layer_mix('layer:-2', num_layers=6)`` -> ``SelectLayer(-2)``.
  """
  num_states = None if num_layers is None else num_layers + 1
  fixed = {
      'embeddings': lambda: SelectLayer(index=0, name=name),
      'top': lambda: SelectLayer(index=-1, name=name),
      'scalar_mix': lambda: ScalarMix(do_layer_norm=False, name=name),
      'scalar_mix_norm': lambda: ScalarMix(do_layer_norm=True, name=name),
  }
  if spec in fixed:
    return fixed[spec]()
  kind, sep, arg = spec.partition(':')
  if sep and kind == 'layer':
    index = _parse_int(spec, arg)
    if num_states is not None:
      _check_index(index, num_states)
    return SelectLayer(index=index, name=name)
  if sep and kind == 'last':
    k = _parse_int(spec, arg)
    if num_states is not None:
      _check_k(k, num_states)
    elif k < 1:
      raise ValueError(f'layer mix spec {spec!r}: k={k} must be >= 1.')
    return ConcatLastK(k=k, name=name)
  raise ValueError(f'Unknown layer mix spec {spec!r}. '
                   f'Valid specs: {", ".join(VALID_SPECS)}.')


def mix_weights(params) -> jax.Array:
  """Returns the normalised scalar-mix weights ``softmax(weights)`` (L+1,).

  Args:
    params: the task model's params (with a 'layer_mix' entry), a variables dict
      ``{'params': ...}``, or the layer-mix subtree itself.
  Returns:
    Float32 array summing to 1; index 0 = embeddings. Useful for plots.
  """
  tree = params
  if 'params' in tree:
    tree = tree['params']
  if 'layer_mix' in tree:
    tree = tree['layer_mix']
  if 'weights' not in tree:
    raise ValueError('mix_weights: no scalar-mix params found; expected a '
                     "'layer_mix' entry with 'weights' (is the spec 'scalar_mix'?). "
                     f'Top-level keys: {sorted(params)}.')
  return jax.nn.softmax(jnp.asarray(tree['weights'], jnp.float32))
