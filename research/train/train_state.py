"""From params, an optimizer and loss terms to the jitted step and its placed train state.

    step, state = build(model, params, tx, terms, mesh=mesh, labels=labels, ...)
    state, metrics = step(state, batch, teacher_params)      # donated, compiled once

    step, state = finetuning_step(model, params, {'learning_rate': 1e-4, 'total_steps': 10})

The one construction the trainer, the benchmarks and the notebooks use: the state
(`step.init_state`) with every leaf pinned to a sharding of the mesh (or committed to
the one device), the loss terms' own params and their optimizer added, and
`step.make_train_step` jitted with the state donated and returned placed as it came, so
step 2 sees the layout step 1 did and never compiles again.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import optax

from research.train import sharding
from research.train import step as step_lib
from research.train.optimizers import make_optimizer
from research.transforms import freeze


def build(model, params, tx: optax.GradientTransformation, terms: Sequence[Any], *,
          mesh=None, labels=None, schedule=None, seed: int = 0, teachers: Sequence[Any] = (),
          teacher_encoders: Sequence[Any] = (), accumulate_steps: int = 1,
          owned: dict | None = None, aux_tx: optax.GradientTransformation | None = None,
          aux_rng: jax.Array | None = None) -> tuple[Callable, dict]:
  """(jitted step, train state) for `model` with `params` placed as they are.

  Args:
    model: the student (a TaskModel).
    params: its params (on `mesh` when given).
    tx: the optimizer (freezing applied).
    terms: the loss terms.
    mesh: a `jax.sharding.Mesh`, or None for one device.
    labels: the freeze labels of the params ('train' / 'freeze').
    schedule: the learning-rate schedule (logged).
    seed: the RNG seed of dropout.
    teachers: frozen teacher models (their params are the step's third argument).
    teacher_encoders: their EncoderConfigs, for terms that own params (projections).
    accumulate_steps: micro-batches per update.
    owned: {name: OwnedState} techniques keep in the state (EMA).
    aux_tx: the optimizer of the terms' own params (needed when a term owns some).
    aux_rng: their initialisation key.
  """
  state = step_lib.init_state(params, tx, seed, owned=owned)
  aux = step_lib.init_aux(terms, aux_rng if aux_rng is not None else jax.random.PRNGKey(seed),
                          model.encoder, teacher_encoders)
  if aux:
    if aux_tx is None:
      raise ValueError(f'loss terms {sorted(aux)} own parameters; give aux_tx to train them')
    state = step_lib.add_aux(state, aux, aux_tx)
  state, shardings = place(state, mesh)
  step = jax.jit(
      step_lib.make_train_step(model, tx, terms, teachers=teachers, labels=labels,
                               schedule=schedule, owned=owned,
                               accumulate_steps=accumulate_steps, aux_tx=aux_tx),
      donate_argnums=0, out_shardings=(shardings, None))
  return step, state


def place(state: Any, mesh=None) -> tuple[Any, Any]:
  """(state, shardings): every leaf pinned to a sharding on `mesh` (or to the default
  device), so the jitted step can return the same ones."""
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, state)
  else:
    shardings = jax.tree.map(lambda x: sharding.on_mesh(x, mesh), state)
  return sharding.put(state, shardings), shardings


def finetuning_step(model, params, optimizer: dict, *, freeze_preset: str = 'full',
                    seed: int = 1, terms: Sequence[Any] | None = None
                    ) -> tuple[Callable, dict]:
  """The trainer's step for `model` with an optimizer config (`make_optimizer`'s fields)
  under the freezing preset: what a benchmark or a notebook times or runs by hand."""
  rules = freeze.preset(freeze_preset)
  tx = freeze.with_freezing(make_optimizer(optimizer), params, rules)
  terms = list(terms) if terms is not None else [step_lib.TaskLoss(model.objective)]
  return build(model, params, tx, terms, labels=freeze.freeze_labels(params, rules),
               seed=seed)
