"""Distillation of intermediates: hidden states, attention maps, self-attention relations.

Loss terms for the train step (the protocol is in `research/transforms/distill.py`)
that compare what the student and frozen in-step teachers compute inside the encoder:

    terms = [TaskLoss(objective),
             HiddenStateMSE('uniform', weight=1.0),       # TinyBERT (Jiao et al. 2020)
             AttentionKL('uniform', weight=1.0),          # TinyBERT, as distributions
             MiniLMRelations('last:1', relation_heads=12)]  # MiniLM v2 (Wang et al. 2021)

Layer maps pair student layers with teacher layers (0-based Transformer layers;
`hidden_states[i + 1]` is layer i's output, `hidden_states[0]` the embeddings):
  'uniform'  student layer i <- teacher layer (i + 1) * T // S - 1 (S student, T teacher
             layers; needs S <= T): the last layer learns from the last, and for
             T = 2 S student layer i learns from teacher layer 2 i + 1 (TinyBERT's
             g(m) = m * T / S counted from 1).
  'last:k'   the last k student layers <- the last k teacher layers, in order
             ('last' = 'last:1', MiniLM).
  '1,3,5'    entry i is the teacher layer student layer i learns from (S entries).

Each term's value is a mean over the batch's real tokens (padding tokens and padding
rows excluded), over mapped layers and over teachers; it is 0 when the student is the
teacher. The teachers' intermediates arrive behind `stop_gradient` (see step.py).

Term-owned parameters: a term with an `init(rng, student, teachers) -> params` method
(student and teachers are `EncoderConfig`s) owns trainable parameters, passed back to
it as `__call__(..., params=...)`. `HiddenStateMSE` owns TinyBERT's projections
student_width -> teacher_width (one for the embeddings, one shared by the layers, per
teacher whose width differs). The step trains them beside the student and checkpoints
them for resume, but they are not part of the student model (see step.py).

Example:
  >>> layer_pairs('uniform', 2, 6)
  ((0, 2), (1, 5))
  >>> layer_pairs('last:2', 2, 6)
  ((0, 4), (1, 5))
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from research import specs

RELATIONS = ('query', 'key', 'value')
_LOG_FLOOR = jnp.finfo(jnp.float32).tiny  # log(p) of a 0 probability stays finite


def layer_pairs(spec: str, student_layers: int, teacher_layers: int
                ) -> tuple[tuple[int, int], ...]:
  """(student layer, teacher layer) pairs of a layer map (see the module docstring)."""
  spec = str(spec).strip()
  s, t = student_layers, teacher_layers
  if s < 1 or t < 1:
    raise ValueError(f'layer map {spec!r}: student ({s}) and teacher ({t}) need layers')
  if spec == 'uniform':
    if s > t:
      raise ValueError(f"layer map 'uniform' needs a student no deeper than the teacher; "
                       f'got {s} student and {t} teacher layers')
    return tuple((i, (i + 1) * t // s - 1) for i in range(s))
  if spec == 'last' or spec.startswith('last:'):
    try:
      k = int(spec.partition(':')[2] or 1)
    except ValueError:
      raise ValueError(f"layer map {spec!r}: 'last:k' needs an integer k") from None
    if not 1 <= k <= min(s, t):
      raise ValueError(f'layer map {spec!r}: k must be in 1..{min(s, t)} '
                       f'({s} student, {t} teacher layers)')
    return tuple((s - k + j, t - k + j) for j in range(k))
  try:
    teacher = specs.items(spec, int, what='layer map')
  except ValueError:
    raise ValueError(f"layer map {spec!r} is not 'uniform', 'last:k' or a comma-separated "
                     'list of teacher layers') from None
  if len(teacher) != s:
    raise ValueError(f'layer map {spec!r} names {len(teacher)} teacher layers but the '
                     f'student has {s} layers (one entry per student layer)')
  bad = [j for j in teacher if not 0 <= j < t]
  if bad:
    raise ValueError(f'layer map {spec!r} names teacher layer(s) {bad} but the teacher has '
                     f'layers 0..{t - 1}')
  return tuple(enumerate(teacher))


def token_mask(batch: dict) -> jax.Array:
  """[b, length] float: 1 on real tokens of real rows (row weight 0 = padding row)."""
  mask = batch['attention_mask'].astype(jnp.float32)
  if batch.get('weights') is not None:
    mask = mask * (batch['weights'] > 0).astype(jnp.float32)[:, None]
  return mask


def _token_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of per-token values [b, length] over the mask's tokens."""
  return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _kl_rows(log_t: jax.Array, log_s: jax.Array, keys: jax.Array) -> jax.Array:
  """KL(teacher || student) per row over the last axis, real keys only."""
  terms = jnp.exp(log_t) * (log_t - log_s)
  return jnp.where(keys, terms, 0.0).sum(-1)


def _layers(intermediates: dict, key: str, term: str) -> tuple:
  if key not in intermediates:
    raise ValueError(f'{term} needs the encoder intermediate {key!r}; run the forward with '
                     'the term\'s `needs` (the train step does)')
  return intermediates[key]


@dataclasses.dataclass(frozen=True)
class _Intermediate:
  """Fields and token count shared by the terms; `check` validates configs early."""
  layer_map: str = 'uniform'
  weight: float = 1.0

  def count(self, batch: dict) -> jax.Array:
    return token_mask(batch).sum()

  def pairs(self, student_layers: int, teacher_layers: int):
    return layer_pairs(self.layer_map, student_layers, teacher_layers)

  def check(self, student, teachers: Sequence[Any]) -> None:
    """Raises ValueError where the layer map does not fit a (student, teacher) pair."""
    if not teachers:
      raise ValueError(f'{self.name} needs at least one in-step teacher')
    for teacher in teachers:
      self.pairs(student.num_layers, teacher.num_layers)

  def _check_attention(self, student, teachers: Sequence[Any]) -> None:
    """Mapped layers must have attention (a layer with every head pruned has none)."""
    for i, teacher in enumerate(teachers):
      for a, b in self.pairs(student.num_layers, teacher.num_layers):
        if not student.heads(a) or not teacher.heads(b):
          raise ValueError(f'{self.name}: student layer {a} or teacher {i} layer {b} has no '
                           'attention heads (all pruned); map other layers')

  def _per_teacher(self, student, teachers, loss):
    if not teachers:
      raise ValueError(f'{self.name} needs a teacher in the train step')
    values = [loss(i, student[1], t[1]) for i, t in enumerate(teachers)]
    return sum(values) / len(values), {}


@dataclasses.dataclass(frozen=True)
class HiddenStateMSE(_Intermediate):
  """TinyBERT's hidden-state (and embedding) loss: MSE(h_s W, h_t) over real tokens.

  W is the identity where the widths agree, else a learned projection owned by the term
  (`init`). With `embeddings`, the embedding outputs are matched too (their own W).
  """
  embeddings: bool = True
  name: str = 'hidden_loss'
  needs: frozenset = frozenset()
  teacher_needs: frozenset = frozenset()

  def init(self, rng: jax.Array, student, teachers: Sequence[Any]) -> dict:
    """Projections for each teacher whose width differs: {'teacher_<i>': {...}}."""
    params = {}
    init = jax.nn.initializers.lecun_normal()
    for i, teacher in enumerate(teachers):
      if teacher.hidden_size == student.hidden_size:
        continue
      shape = (student.hidden_size, teacher.hidden_size)
      keys = jax.random.split(jax.random.fold_in(rng, i))
      params[f'teacher_{i}'] = {'layers': init(keys[0], shape, jnp.float32)}
      if self.embeddings:
        params[f'teacher_{i}']['embeddings'] = init(keys[1], shape, jnp.float32)
    return params

  def __call__(self, student, teachers, batch, params=None):
    mask = token_mask(batch)

    def loss(i, s_inter, t_inter):
      s_hidden = _layers(s_inter, 'hidden_states', self.name)
      t_hidden = _layers(t_inter, 'hidden_states', self.name)
      pairs = [(a + 1, b + 1, 'layers') for a, b in
               self.pairs(len(s_hidden) - 1, len(t_hidden) - 1)]
      if self.embeddings:
        pairs.insert(0, (0, 0, 'embeddings'))
      values = []
      for a, b, part in pairs:
        h_s = s_hidden[a].astype(jnp.float32)
        h_t = t_hidden[b].astype(jnp.float32)
        if h_s.shape[-1] != h_t.shape[-1]:
          projection = (params or {}).get(f'teacher_{i}', {}).get(part)
          if projection is None:
            raise ValueError(
                f'{self.name}: student width {h_s.shape[-1]} != teacher {i} width '
                f'{h_t.shape[-1]} and no projection was given; pass the term\'s params '
                '(step.init_aux)')
          h_s = h_s @ projection
        values.append(_token_mean(jnp.square(h_s - h_t).mean(-1), mask))
      return sum(values) / len(values)

    return self._per_teacher(student, teachers, loss)


@dataclasses.dataclass(frozen=True)
class AttentionKL(_Intermediate):
  """TinyBERT's attention loss as KL(teacher || student) of each head's distribution.

  Mapped layers must have the same number of heads (the maps are compared head by
  head); padding query rows and padding keys do not count.
  """
  name: str = 'attention_loss'
  needs: frozenset = frozenset({'attentions'})
  teacher_needs: frozenset = frozenset({'attentions'})

  def check(self, student, teachers: Sequence[Any]) -> None:
    super().check(student, teachers)
    self._check_attention(student, teachers)
    for i, teacher in enumerate(teachers):
      for a, b in self.pairs(student.num_layers, teacher.num_layers):
        if student.heads(a) != teacher.heads(b):
          raise ValueError(
              f'{self.name} compares heads one to one: student layer {a} has '
              f'{student.heads(a)} heads, teacher {i} layer {b} has {teacher.heads(b)}; '
              'use MiniLMRelations (any head count) or another layer map')

  def __call__(self, student, teachers, batch, params=None):
    del params
    mask = token_mask(batch)
    keys = batch['attention_mask'][:, None, None, :] > 0

    def loss(i, s_inter, t_inter):
      s_maps = _layers(s_inter, 'attentions', self.name)
      t_maps = _layers(t_inter, 'attentions', self.name)
      values = []
      for a, b in self.pairs(len(s_maps), len(t_maps)):
        p_s, p_t = s_maps[a].astype(jnp.float32), t_maps[b].astype(jnp.float32)
        if p_s.shape != p_t.shape:
          raise ValueError(f'{self.name}: student layer {a} attention {p_s.shape} vs '
                           f'teacher {i} layer {b} {p_t.shape}; the head counts must agree')
        log_s = jnp.log(jnp.maximum(p_s, _LOG_FLOOR))
        log_t = jnp.log(jnp.maximum(p_t, _LOG_FLOOR))
        per_row = _kl_rows(log_t, log_s, keys).mean(1)  # [b, q], mean over heads
        values.append(_token_mean(per_row, mask))
      return sum(values) / len(values)

    return self._per_teacher(student, teachers, loss)


def relation_logits(x: jax.Array, relation_heads: int, keys: jax.Array) -> jax.Array:
  """log softmax(x_r x_r^T / sqrt(d_r)) per relation head r: [b, R, q, k].

  Args:
    x: one layer's queries, keys or values [b, heads, length, head_dim]; heads are
      concatenated ([b, length, heads * head_dim]) and split again into
      `relation_heads` slices, so teacher and student need not share a head count.
    relation_heads: R; must divide heads * head_dim.
    keys: [b, 1, 1, length] bool, the real keys (padding keys get no probability).
  """
  b, h, length, d = x.shape
  width = h * d
  if width % relation_heads:
    raise ValueError(f'relation_heads={relation_heads} does not divide the attention width '
                     f'{width} ({h} heads x {d})')
  r = relation_heads
  x = x.astype(jnp.float32).transpose(0, 2, 1, 3).reshape(b, length, r, width // r)
  x = x.transpose(0, 2, 1, 3)
  scores = jnp.einsum('brqd,brkd->brqk', x, x) * (width // r) ** -0.5
  # A large finite bias, not -inf: the masked KL terms stay finite (no NaN gradients).
  return jax.nn.log_softmax(jnp.where(keys, scores, -1e9), axis=-1)


@dataclasses.dataclass(frozen=True)
class MiniLMRelations(_Intermediate):
  """MiniLM(v2)'s self-attention relation loss: KL of query-query, key-key and
  value-value relations of mapped layers, over `relation_heads` relation heads.

  `relation_heads` = 0 takes the student layer's head count. Works across widths and
  head counts (only the relation head count must divide both widths). With
  relations=('value',) and the attention maps (AttentionKL) this is MiniLM v1.
  """
  layer_map: str = 'last:1'
  relation_heads: int = 0
  relations: tuple[str, ...] = RELATIONS
  name: str = 'relation_loss'
  needs: frozenset = frozenset({'qkv'})
  teacher_needs: frozenset = frozenset({'qkv'})

  def __post_init__(self):
    if self.relation_heads < 0:
      raise ValueError(f'relation_heads must be >= 0 (0 = the student\'s heads), got '
                       f'{self.relation_heads}')
    unknown = sorted(set(self.relations) - set(RELATIONS))
    if unknown or not self.relations:
      raise ValueError(f'relations must be a non-empty subset of {RELATIONS}, got '
                       f'{self.relations}')

  def heads_for(self, student_heads: int) -> int:
    return self.relation_heads or student_heads

  def check(self, student, teachers: Sequence[Any]) -> None:
    super().check(student, teachers)
    self._check_attention(student, teachers)
    for i, teacher in enumerate(teachers):
      for a, b in self.pairs(student.num_layers, teacher.num_layers):
        r = self.heads_for(student.heads(a))
        widths = (student.heads(a) * student.head_dim, teacher.heads(b) * teacher.head_dim)
        if r == 0 or any(w % r for w in widths):
          raise ValueError(f'{self.name}: {r} relation heads must divide the attention '
                           f'widths of student layer {a} ({widths[0]}) and teacher {i} '
                           f'layer {b} ({widths[1]})')

  def __call__(self, student, teachers, batch, params=None):
    del params
    mask = token_mask(batch)
    keys = batch['attention_mask'][:, None, None, :] > 0
    plural = {'query': 'queries', 'key': 'keys', 'value': 'values'}

    def loss(i, s_inter, t_inter):
      del i
      values = []
      s_layers = len(_layers(s_inter, 'queries', self.name))
      t_layers = len(_layers(t_inter, 'queries', self.name))
      for a, b in self.pairs(s_layers, t_layers):
        r = self.heads_for(s_inter['queries'][a].shape[1])
        for kind in self.relations:
          log_s = relation_logits(s_inter[plural[kind]][a], r, keys)
          log_t = relation_logits(t_inter[plural[kind]][b], r, keys)
          values.append(_token_mean(_kl_rows(log_t, log_s, keys).mean(1), mask))
      return sum(values) / len(values)

    return self._per_teacher(student, teachers, loss)
