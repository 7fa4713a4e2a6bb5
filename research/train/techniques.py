"""The table of training techniques the trainer consults (the interface:
`research/transforms/technique.py`).

The trainer calls the functions here at fixed points of its flow; each folds over the
techniques a config turns on, in the table's order. Adding a technique: write its
`Technique` object in its own file, add it to `TECHNIQUES`, give its config fields
defaults in `research/train/defaults.py`.
"""
from __future__ import annotations

from typing import Any, Callable

from research.train import averaging, distillation
from research.transforms import lora, qat, sparsity
from research.transforms.technique import OwnedState, Setup, Technique

# Order matters where contributions compose: encoder rules are prepended (the later
# technique's first), optimizer wrappers nest (the later one outermost).
TECHNIQUES: tuple[Technique, ...] = (
    qat.TECHNIQUE,            # fake-quantizing products and hooks
    lora.TECHNIQUE,           # low-rank adapters on frozen kernels
    sparsity.TECHNIQUE,       # gradual pruning inside the optimizer
    distillation.TECHNIQUE,   # teachers and their loss terms
    averaging.TECHNIQUE,      # parameter EMA, evaluated instead of the params
)


def active(config) -> list[Technique]:
  """The techniques `config` turns on; every technique's fields are checked first (a
  field of a technique that is off may still be wrong, e.g. a distillation weight
  without teachers)."""
  for technique in TECHNIQUES:
    technique.check(config)
  return [t for t in TECHNIQUES if t.active(config)]


def config_keys() -> tuple[str, ...]:
  """Every config field some technique owns."""
  return tuple(key for t in TECHNIQUES for key in t.config_keys)


def encoder(on: list[Technique], config, encoder_config):
  for technique in on:
    encoder_config = technique.encoder(config, encoder_config)
  return encoder_config


def new_params(on: list[Technique], config) -> str | None:
  """One regex over the params the techniques add to a model they start from."""
  patterns = [p for p in (t.new_params(config) for t in on) if p]
  return '|'.join(f'(?:{p})' for p in patterns) or None


def freeze_rules(on: list[Technique], config, rules: list) -> list:
  for technique in on:
    rules = technique.freeze_rules(config, rules)
  return rules


def optimizer(on: list[Technique], config, tx, total_steps: int):
  for technique in on:
    tx = technique.optimizer(config, tx, total_steps)
  return tx


def teachers(on: list[Technique], config, setup: Setup) -> tuple[tuple, tuple]:
  models, params = (), ()
  for technique in on:
    m, p = technique.teachers(config, setup)
    models, params = models + tuple(m), params + tuple(p)
  return models, params


def loss_terms(on: list[Technique], config, setup: Setup, terms: list,
               teacher_encoders=()) -> list:
  for technique in on:
    terms = technique.loss_terms(config, setup, terms, teacher_encoders)
  return terms


def batch_fields(on: list[Technique], config, setup: Setup
                 ) -> list[Callable[[Any], dict]]:
  return [f for f in (t.batch_fields(config, setup) for t in on) if f is not None]


def owned_state(on: list[Technique], config) -> dict[str, OwnedState]:
  """{technique name: its OwnedState}; at most one may say what is evaluated."""
  owned = {t.name: s for t, s in ((t, t.state(config)) for t in on) if s is not None}
  evaluating = [name for name, s in owned.items() if s.eval_params is not None]
  if len(evaluating) > 1:
    raise ValueError(f'techniques {evaluating} each replace the evaluated params; turn all '
                     'but one off')
  return owned
