"""The train step: a model, an optimizer and loss terms make one jitted, donated update.

    terms = [TaskLoss(objective)]
    step = make_train_step(model, tx, terms, labels=freeze_labels(params, rules))
    step = jax.jit(step, donate_argnums=0)
    state = init_state(params, tx, seed=0)
    state, metrics = step(state, batch)                       # no teacher
    state, metrics = step(state, batch, (teacher_params,))    # with frozen teachers

The loss is the weighted sum of the terms (see `research/transforms/distill.py` for
the term protocol): each term maps (student `(outputs, intermediates)`, teachers'
`(outputs, intermediates)`, batch) to a scalar and metrics. Frozen teachers are models
given here and params given to each call: an argument of the jitted step, never
donated, never in the optimizer state or the checkpointed state, and behind
`stop_gradient`, so no gradient reaches them.

Gradient accumulation runs inside the step: a batch of k * b rows is split into k
micro-batches of b (rows i, i + k, ... so each stays spread over the data-parallel
devices), their gradients summed in a `lax.scan`, and one optimizer update follows. Each
micro-batch's loss is weighted by its share of each term's units (`term.count`: real
rows, or labelled tokens for tagging), so the update equals the one of the whole batch
up to float rounding. One step is one optimizer update: the schedule, the logged
learning rate and any state a technique owns (the parameter average, EMA) advance once
per update.

Technique-owned state: `owned` = {name: OwnedState} (`research/transforms/technique.py`)
puts `state[name] = init(params)` beside the params and, after every update,
`state[name] = update(state[name], new params, step)` (the parameter average keeps its
average this way, as 'ema').

Term-owned parameters ("aux"): a term with `init(rng, student_config, teacher_configs)`
owns trainable parameters, e.g. TinyBERT's projection of the student's hidden states
to a wider teacher's (`research/transforms/distill_intermediate.py`). They live in
`state['aux']` = {term name: params}, built by `init_aux` and added by
`init_state(..., aux=..., aux_tx=...)`; the step differentiates the loss with respect
to them beside the student's params, updates them with their own optimizer `aux_tx`
(state['aux_opt_state']; they have no freeze labels, LLRD depth or EMA) and passes
each term its own as `term(student, teachers, batch, params=...)`. They are in the
checkpointed train state, so a resumed run continues them, but not in `state['params']`:
the saved best params, exports and `init_from` see the student alone. Without such
terms the state has no 'aux' entry and is what it was before.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from research.train import sharding

Params = Any
# The optimizer's update is traced under this name, so a profile can tell its ops apart
# (research/evaluate/hlo_ops.py).
OPTIMIZER_SCOPE = 'optimizer_update'


@dataclasses.dataclass(frozen=True)
class TaskLoss:
  """The objective's own loss against the batch's labels."""
  objective: Any
  weight: float = 1.0
  name: str = 'task_loss'
  needs: frozenset = frozenset()
  teacher_needs: frozenset = frozenset()

  def count(self, batch: dict) -> jax.Array:
    return self.objective.count(batch)

  def __call__(self, student, teachers, batch):
    del teachers
    return self.objective.loss(student[0], batch)[0], {}


def forward(model, params: Params, batch: dict, *, train: bool = False, rng=None,
            needs: frozenset = frozenset()):
  """`model.apply` on a batch: `(outputs, intermediates)`.

  Args:
    model: a TaskModel (or any module with its call signature).
    params: its params.
    batch: 'input_ids', 'attention_mask' and optional 'token_type_ids'.
    train: dropout on (needs `rng`).
    needs: intermediates to return beyond hidden states: 'attentions', 'qkv'.
  """
  objective = getattr(model, 'objective', None)
  extra = objective.head_inputs(batch, train) if objective is not None else {}
  return model.apply({'params': params}, batch['input_ids'], batch['attention_mask'],
                     batch.get('token_type_ids'), deterministic=not train,
                     rngs={'dropout': rng} if train else None,
                     output_attentions='attentions' in needs, output_qkv='qkv' in needs,
                     **({'head_inputs': extra} if extra else {}))


def owns_params(term: Any) -> bool:
  """Whether a loss term owns trainable parameters (it has `init`)."""
  return callable(getattr(term, 'init', None))


def init_aux(terms: Sequence[Any], rng: jax.Array, student_config: Any,
             teacher_configs: Sequence[Any] = ()) -> dict:
  """{term name: params} of the terms that own parameters (empty trees dropped).

  Args:
    terms: the step's loss terms.
    rng: initialisation key (folded with each term's index).
    student_config: the student's EncoderConfig.
    teacher_configs: each in-step teacher's EncoderConfig.
  """
  aux = {}
  for i, term in enumerate(terms):
    if owns_params(term):
      params = term.init(jax.random.fold_in(rng, i), student_config, tuple(teacher_configs))
      if jax.tree.leaves(params):
        aux[term.name] = params
  return aux


def make_loss_fn(model, terms: Sequence[Any], teachers: Sequence[Any] = (), *,
                 train: bool = True) -> Callable[..., tuple[jax.Array, dict]]:
  """`loss(params, batch, rng, teacher_params, shares=None, aux=None) -> (total, metrics)`.

  `shares` (one scalar per term) weighs each term's value; None means 1 (a whole
  batch). The teachers run without dropout, behind `stop_gradient`. `aux` holds the
  params of terms that own some ({term name: params}, see the module docstring).
  `train=False`: the student without dropout too (dev losses; `rng` is unused).
  """
  if not terms:
    raise ValueError('the train step needs at least one loss term')
  names = [t.name for t in terms]
  if len(set(names)) != len(names):
    raise ValueError(f'loss terms need distinct names, got {names}')
  student_needs = frozenset().union(*(t.needs for t in terms))
  teacher_needs = frozenset().union(*(t.teacher_needs for t in terms))

  def loss(params, batch, rng, teacher_params=(), shares=None, aux=None):
    if len(teacher_params) != len(teachers):
      raise ValueError(f'the step has {len(teachers)} teacher model(s) but got '
                       f'{len(teacher_params)} teacher param tree(s)')
    student = forward(model, params, batch, train=train, rng=rng, needs=student_needs)
    teacher_out = tuple(
        jax.lax.stop_gradient(forward(t, jax.lax.stop_gradient(p), batch, needs=teacher_needs))
        for t, p in zip(teachers, teacher_params))
    total, metrics = 0.0, {}
    for i, term in enumerate(terms):
      if owns_params(term):
        value, extra = term(student, teacher_out, batch, params=(aux or {}).get(term.name, {}))
      else:
        value, extra = term(student, teacher_out, batch)
      if shares is not None:
        value = value * shares[i]
      total = total + term.weight * value
      metrics[term.name] = value
      metrics.update({f'{term.name}/{k}': v for k, v in extra.items()})
    return total, metrics
  return loss


def init_state(params: Params, tx: optax.GradientTransformation, seed: int,
               owned: dict | None = None, aux: dict | None = None,
               aux_tx: optax.GradientTransformation | None = None) -> dict:
  """The train state pytree: step, params, optimizer state, RNG, the state techniques
  own (`owned`: {name: OwnedState}, e.g. 'ema') and the loss terms' own params (`aux`,
  trained by `aux_tx`)."""
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'opt_state': init_like_params(tx.init, params), 'rng': jax.random.PRNGKey(seed)}
  for name, part in (owned or {}).items():
    if name in state:
      raise ValueError(f'a technique\'s state {name!r} would replace the train state\'s own')
    state[name] = init_like_params(part.init, params)
  if aux:
    state = add_aux(state, aux, aux_tx)
  return state


def init_like_params(init: Callable[[Params], Any], params: Params) -> Any:
  """`init(params)` jitted so that what mirrors a parameter is placed as that parameter.

  With FSDP-sharded params, Adam's moments, EMA copies and pruning masks come out split
  the same way (built on their devices, never gathered whole on one).
  """
  shardings = sharding.mirrored_shardings(jax.eval_shape(init, params), params)
  if shardings is None:  # params not on a mesh: one device
    return jax.jit(init)(params)
  return jax.jit(init, out_shardings=shardings)(params)


def add_aux(state: dict, aux: dict, aux_tx: optax.GradientTransformation | None) -> dict:
  """The state with the loss terms' own params and their optimizer state."""
  if aux_tx is None:
    raise ValueError('loss terms own parameters (aux) but no aux_tx optimizer was given')
  return {**state, 'aux': aux, 'aux_opt_state': jax.jit(aux_tx.init)(aux)}


def _micro_batches(batch: dict, k: int) -> dict:
  """[k * b, ...] -> [k, b, ...] with micro-batch i = rows i, i + k, i + 2k, ..."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f'batch of {x.shape[0]} rows does not split into {k} micro-batches')
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(model, tx: optax.GradientTransformation, terms: Sequence[Any], *,
                    teachers: Sequence[Any] = (), labels: Any = None,
                    schedule: optax.Schedule | None = None, owned: dict | None = None,
                    accumulate_steps: int = 1,
                    aux_tx: optax.GradientTransformation | None = None):
  """Builds `step(state, batch, teacher_params=()) -> (state, metrics)` (not jitted).

  Args:
    model: the student (a TaskModel).
    tx: the optimizer (freezing already applied, e.g. `freeze.with_freezing`).
    terms: loss terms, summed with their weights.
    teachers: frozen teacher models; their params are the step's third argument.
    labels: optional 'train' / 'freeze' label tree over the params; frozen params get
      `stop_gradient` (XLA then skips their gradients) and stay out of the grad norm.
    schedule: the learning-rate schedule, logged as 'learning_rate'.
    owned: {name: OwnedState} of state techniques keep (`init_state(owned=...)`).
    accumulate_steps: micro-batches per update (the batch must split evenly).
    aux_tx: the optimizer of the terms' own params (`state['aux']`), when any term
      owns some.

  Returns:
    The step function; jit it with `donate_argnums=0` (never donate the teachers).
  """
  if accumulate_steps < 1:
    raise ValueError(f'accumulate_steps must be >= 1, got {accumulate_steps}')
  loss_fn = make_loss_fn(model, terms, teachers)
  frozen = (None if labels is None else
            jax.tree.map(lambda label: label == 'freeze', labels))

  def differentiable(params):
    if frozen is None:
      return params
    return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)

  # Differentiated with respect to (student params, terms' own params).
  grad_fn = jax.value_and_grad(
      lambda trainable, batch, rng, teacher_params, shares=None: loss_fn(
          differentiable(trainable[0]), batch, rng, teacher_params, shares, trainable[1]),
      has_aux=True)

  def gradients(trainable, batch, rng, teacher_params):
    if accumulate_steps == 1:
      return grad_fn(trainable, batch, rng, teacher_params)
    micro = _micro_batches(batch, accumulate_steps)
    counts = jnp.stack([jax.vmap(term.count)(micro) for term in terms], 1)  # [k, terms]
    shares = counts / jnp.maximum(counts.sum(0), 1.0)
    zeros = jax.tree.map(jnp.zeros_like, trainable)

    def body(carry, xs):
      grads, total, metrics = carry
      mb, share, index = xs
      (value, extra), g = grad_fn(trainable, mb, jax.random.fold_in(rng, index),
                                  teacher_params, share)
      grads = jax.tree.map(jnp.add, grads, g)
      metrics = jax.tree.map(jnp.add, metrics, extra)
      return (grads, total + value, metrics), None

    abstract = jax.eval_shape(lambda: loss_fn(trainable[0], jax.tree.map(lambda x: x[0], micro),
                                              rng, teacher_params, shares[0], trainable[1])[1])
    metrics0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    (grads, total, metrics), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), metrics0),
        (micro, shares, jnp.arange(accumulate_steps)))
    return (total, metrics), grads

  def step(state, batch, teacher_params=()):
    rng = jax.random.fold_in(state['rng'], state['step'])
    (total, parts), (grads, aux_grads) = gradients(
        (state['params'], state.get('aux', {})), batch, rng, tuple(teacher_params))
    with jax.named_scope(OPTIMIZER_SCOPE):
      updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    # The norm covers trainable gradients only: reading frozen ones would force XLA to
    # compute them, and they never move a parameter.
    trainable = jax.tree.leaves(grads) if frozen is None else [
        g for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(frozen)) if not f]
    metrics = {'loss': total, 'grad_norm': optax.global_norm(trainable),
               'param_norm': optax.global_norm(params)}
    if len(terms) > 1 or any('/' in k for k in parts):
      metrics.update(parts)
    if schedule is not None:
      metrics['learning_rate'] = schedule(state['step'])
    new_state = {**state, 'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}
    for name, part in (owned or {}).items():
      new_state[name] = part.update(state[name], params, state['step'])
    if 'aux' in state:
      if aux_tx is None:
        raise ValueError("the state holds loss terms' params (aux) but make_train_step "
                         'got no aux_tx to update them')
      aux_updates, aux_opt_state = aux_tx.update(aux_grads, state['aux_opt_state'],
                                                 state['aux'])
      new_state['aux'] = optax.apply_updates(state['aux'], aux_updates)
      new_state['aux_opt_state'] = aux_opt_state
      metrics['aux_grad_norm'] = optax.global_norm(aux_grads)
    return new_state, metrics

  return step
