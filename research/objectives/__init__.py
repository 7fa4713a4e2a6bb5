"""Task objectives: one object per task kind holding its head, loss, predictions and scoring.

    objective = objectives.make('classification', num_labels=2, pooling='mean')
    model = TaskModel(encoder_config, objective)

Adding a kind: a module here with an `Objective` subclass, and its line in `KINDS`.
"""
from __future__ import annotations

from typing import Any, Mapping

from research.objectives.base import Objective
from research.objectives.causal_lm import CausalLM
from research.objectives.classification import Classification
from research.objectives.masked_lm import MaskedLM
from research.objectives.regression import Regression
from research.objectives.sentence_order import NextSentence, PreTraining, SentenceOrder
from research.objectives.span import Span
from research.objectives.tagging import Tagging

KINDS: dict[str, type[Objective]] = {
    cls.kind: cls for cls in (Classification, Regression, Tagging, Span)}
KINDS[MaskedLM.kind] = MaskedLM
KINDS[NextSentence.kind] = NextSentence
KINDS[SentenceOrder.kind] = SentenceOrder
KINDS[PreTraining.kind] = PreTraining
KINDS[CausalLM.kind] = CausalLM


def make(kind: str, **fields: Any) -> Objective:
  """The objective of task kind `kind` with the given head fields."""
  if kind not in KINDS:
    raise ValueError(f'Unknown task kind {kind!r}; expected one of {sorted(KINDS)}')
  return KINDS[kind](**fields)


def from_dict(values: Mapping[str, Any]) -> Objective:
  """Inverse of `Objective.to_dict` (a run's model.json)."""
  values = dict(values)
  return make(values.pop('kind'), **values)


def for_task(spec, pooling: str = 'cls', head_hidden: int = 0, head_activation: str = 'tanh',
             head_dropout: float = 0.1, options: Mapping[str, Any] | None = None) -> Objective:
  """The objective of a registered task (`research.data.tasks.TaskSpec`).

  `options` holds trainer config fields; the kind takes those it lists in `options`.
  """
  if spec.kind not in KINDS:
    raise ValueError(f'Task {spec.name!r} has kind {spec.kind!r}, which no objective '
                     f'implements; expected one of {sorted(KINDS)}')
  cls = KINDS[spec.kind]
  own = {k: v for k, v in (options or {}).items() if k in cls.options}
  return cls(**cls.labels_for(spec), pooling=pooling, head_hidden=head_hidden,
             head_activation=head_activation, head_dropout=head_dropout, **own)
