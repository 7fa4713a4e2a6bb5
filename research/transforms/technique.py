"""The seam through which a training technique plugs into the trainer.

A technique (quantization-aware training, gradual pruning, LoRA, distillation, a
parameter average, ...) is an object with the methods below; each defaults to
contributing nothing, so a technique overrides only what it needs. The trainer
(`research/train/trainer.py`) calls every active technique of the table in
`research/train/techniques.py` at fixed points of its flow and names none of them:

    check(config)                       its config fields are valid
    encoder(config, encoder_config)     product / hook / projection rules (QAT, LoRA)
    new_params(config)                  params it adds to a pre-trained model (LoRA)
    freeze_rules(config, rules)         what trains (LoRA: only its factors)
    optimizer(config, tx, total_steps)  an optax wrapper of the trainable params' update
                                        (sparsity: masks in the optimizer state)
    teachers(config, setup)             frozen models run inside the step (distillation)
    loss_terms(config, setup, terms)    loss terms over (student, teachers, batch)
    batch_fields(config, setup)         per-example arrays added to each batch (cached
                                        teacher targets)
    state(config)                       train-state it owns, updated after every step
                                        and possibly evaluated instead of the params (EMA)

Its config fields have their defaults in the one schema,
`research/train/defaults.trainer_defaults`; `config_keys` names them, so a run derived
from another (a distilled student) can reset them. Adding a technique means writing one
such object in the technique's own file, listing it in the table and giving its fields
defaults in the schema.

Example (a technique that scales the loss; `Setup` is what the trainer has built):
  >>> class Scaled(Technique):
  ...   name, config_keys = 'scaled', ('loss_scale',)
  ...   def active(self, config): return config.loss_scale != 1.0
  ...   def loss_terms(self, config, setup, terms, teacher_encoders=()):
  ...     return [dataclasses.replace(t, weight=t.weight * config.loss_scale) for t in terms]
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

Params = Any


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the trainer has built when it asks techniques for data-dependent parts.

  Attributes:
    spec: the task (or corpus) spec.
    objective: the student's objective (with its train statistics).
    tokenizer: the run's tokenizer.
    encoder: the student's EncoderConfig (after every technique's `encoder`).
    train_features: the encoded train features, in the order batches index them.
    workdir: the run folder.
  """
  spec: Any
  objective: Any
  tokenizer: Any
  encoder: Any
  train_features: Sequence[dict]
  workdir: str


class OwnedState(NamedTuple):
  """Train-state a technique keeps beside the params (`state[technique.name]`).

  Attributes:
    init: params -> its initial tree (placed like the params it mirrors).
    update: (its tree, new params, step index just taken) -> its new tree; traced
      inside the jitted step.
    eval_params: (its tree, live params) -> the params to evaluate and save as best,
      or None to evaluate the live params.
  """
  init: Callable[[Params], Any]
  update: Callable[[Any, Params, Any], Any]
  eval_params: Callable[[Any, Params], Params] | None = None


class Technique:
  """A training technique's contributions (see the module docstring); no-op defaults."""
  name: str = ''
  config_keys: tuple[str, ...] = ()

  def active(self, config) -> bool:
    """Whether `config` turns the technique on."""
    del config
    return False

  def check(self, config) -> None:
    """Raises ValueError naming the field when a value of its own is unusable (called
    whether or not the technique is active)."""
    del config

  def encoder(self, config, encoder_config):
    """The encoder config with this technique's product / hook / projection rules."""
    del config
    return encoder_config

  def new_params(self, config) -> str | None:
    """Regex over param paths this technique adds to a model it starts from (they are
    initialised fresh instead of loaded), or None."""
    del config
    return None

  def freeze_rules(self, config, rules: list) -> list:
    """The (regex, 'train' | 'freeze') rules with this technique's own first."""
    del config
    return rules

  def optimizer(self, config, tx, total_steps: int):
    """The optimizer of the trainable params, wrapped (it runs inside the freezing
    partition, so frozen params are never touched)."""
    del config, total_steps
    return tx

  def teachers(self, config, setup: Setup) -> tuple[tuple, tuple]:
    """(models, params) of frozen teachers run inside the step."""
    del config, setup
    return (), ()

  def loss_terms(self, config, setup: Setup, terms: list, teacher_encoders=()) -> list:
    """The step's loss terms, with this technique's added or reweighted."""
    del config, setup, teacher_encoders
    return terms

  def batch_fields(self, config, setup: Setup) -> Callable[[Any], dict] | None:
    """index [b] (-1 = padding row) -> {name: array [b, ...]} added to each batch."""
    del config, setup
    return None

  def state(self, config) -> OwnedState | None:
    """Train-state this technique owns, or None."""
    del config
    return None
