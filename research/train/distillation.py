"""Distillation as a trainer technique: teachers, soft targets and intermediate terms.

    --config.distill.teachers=runs/a,runs/b [--config.distill.mode=in_step]

Saved runs (or 'hf:<folder>' classifiers) teach the student (`teachers.py` loads them).
Mode 'cached' runs them once on the train features and adds their softened outputs to
each batch as 'teacher' (`distill.SoftTargets`); mode 'in_step' runs the frozen
teachers inside every step (`distill.TeacherSoftTargets`), which distillation of
intermediates needs: TinyBERT's hidden-state MSE and attention KL, MiniLM's q/k/v
relations (`distill_intermediate.py`), each a loss term with its weight. The task loss
keeps weight 1 - alpha.

General (task-agnostic) distillation is the same technique on a corpus
(`config.corpus.source`): the teachers are read as encoders (a run of any task, or
'hf:<checkpoint>', `teachers.encoder_teachers`), only the intermediate terms compare
them with the student, and alpha keeps its meaning as the share taken from the
objective's own loss: the masked-LM loss keeps weight 1 - alpha, and alpha = 1 drops it
(distillation terms only; the MLM head is then neither computed nor trained). A weight
rather than a new corpus objective, so the corpus pipeline, its masked batches and dev
evaluation stay as they are (the teacher sees the same masked text: DistilBERT's set-up).
Its evaluation also reports the terms' loss on the dev sequences ('dev_loss'), and with
alpha = 1 the best checkpoint is the one of the lowest dev loss (`selects_on_dev_loss`).
"""
from __future__ import annotations

import numpy as np

from research.train import saved_runs
from research.train.build import uses_corpus
from research.train import teachers as teachers_lib
from research.train.step import TaskLoss
from research.transforms import distill, distill_intermediate
from research.transforms.technique import Setup, Technique

MODES = ('cached', 'in_step')
# config.distill weights of the terms over intermediates (0 = off).
INTERMEDIATE_WEIGHTS = ('hidden_weight', 'attention_weight', 'relation_weight')


class Distillation(Technique):
  """`config.distill.teachers` set: teachers' soft targets (and intermediates) as loss terms."""
  name = 'distill'
  config_keys = ('distill',)

  def active(self, config) -> bool:
    return bool(config.distill.teachers)

  def check(self, config) -> None:
    d = config.distill
    for name in INTERMEDIATE_WEIGHTS:
      if d[name] < 0:
        raise ValueError(f'config.distill.{name} must be >= 0 (0 = off), got {d[name]}')
    if d.relation_heads < 0:
      raise ValueError("config.distill.relation_heads must be >= 0 (0 = the student's "
                       f'heads), got {d.relation_heads}')
    intermediate = [name for name in INTERMEDIATE_WEIGHTS if d[name]]
    if intermediate and not d.teachers:
      raise ValueError(f'config.distill.{intermediate[0]} > 0 needs config.distill.teachers')
    if not d.teachers:
      return
    if not 0.0 <= d.alpha <= 1.0:
      raise ValueError(f'config.distill.alpha must be in [0, 1], got {d.alpha}')
    if d.temperature <= 0:
      raise ValueError(f'config.distill.temperature must be positive, got {d.temperature}')
    if d.checkpoint not in saved_runs.WHICH:
      raise ValueError("config.distill.checkpoint must be 'best' or 'latest', got "
                       f'{d.checkpoint!r}')
    if d.mode not in MODES:
      raise ValueError(f'config.distill.mode must be one of {MODES}, got {d.mode!r}')
    if intermediate and d.mode != 'in_step':
      raise ValueError(f'config.distill.{intermediate[0]} > 0 distils intermediates, which '
                       "needs the teachers in the step: set config.distill.mode='in_step'")
    teachers_lib.teacher_folders(config)  # 'hf:' with no name fails here
    if uses_corpus(config):
      if d.mode != 'in_step':
        raise ValueError('config.distill on a corpus (general distillation) runs the teachers '
                         "in the step: set config.distill.mode='in_step'")
      if not intermediate:
        raise ValueError('config.distill on a corpus distils intermediates only: set '
                         f'{", ".join("config.distill." + n for n in INTERMEDIATE_WEIGHTS)} '
                         '(at least one > 0)')

  def teachers(self, config, setup: Setup):
    if config.distill.mode != 'in_step':
      return (), ()
    if uses_corpus(config):
      return teachers_lib.encoder_teachers(config, setup.objective, setup.tokenizer,
                                           setup.encoder)
    return teachers_lib.in_step_teachers(config, setup.spec, setup.objective, setup.tokenizer)

  def loss_terms(self, config, setup: Setup, terms, teacher_encoders=()):
    d = config.distill
    in_step = d.mode == 'in_step'
    if uses_corpus(config):  # no outputs to soften: the objective's loss at 1 - alpha
      terms = [_reweighted(t, 1 - d.alpha) for t in terms if d.alpha < 1 or
               not isinstance(t, TaskLoss)]
    else:
      soft = (distill.TeacherSoftTargets if in_step else distill.SoftTargets)(
          setup.objective, d.temperature, weight=d.alpha)
      terms = [_reweighted(t, 1 - d.alpha) for t in terms] + [soft]
    extra = []
    if d.hidden_weight:
      extra.append(distill_intermediate.HiddenStateMSE(d.layer_map, d.hidden_weight))
    if d.attention_weight:
      extra.append(distill_intermediate.AttentionKL(d.layer_map, d.attention_weight))
    if d.relation_weight:
      extra.append(distill_intermediate.MiniLMRelations(
          d.relation_layer_map, d.relation_weight, relation_heads=d.relation_heads))
    for term in extra:  # layer maps and head counts against both models, before compiling
      term.check(setup.encoder, tuple(teacher_encoders))
    return terms + extra

  def batch_fields(self, config, setup: Setup):
    if config.distill.mode != 'cached':
      return None
    # [train features, ...] soft targets, looked up by each batch's feature indices;
    # padding rows (-1) get any target: their weight is 0.
    targets = teachers_lib.soft_targets(config, setup.spec, setup.objective, setup.tokenizer,
                                        setup.train_features, setup.workdir)
    return lambda index: {'teacher': targets[np.maximum(index, 0)]}


def reports_dev_loss(config) -> bool:
  """Distillation on a corpus (general distillation): evaluation also reports the loss
  terms on the dev sequences ('dev_loss', and 'dev_loss/<term>')."""
  return TECHNIQUE.active(config) and uses_corpus(config)


def selects_on_dev_loss(config) -> bool:
  """With distillation terms only (alpha = 1) the masked-LM head is not trained, so its
  dev accuracy says nothing: the best checkpoint is the one of the lowest dev loss."""
  return reports_dev_loss(config) and config.distill.alpha == 1


def _reweighted(term, weight: float):
  """The task loss at `weight` of what it had (other terms unchanged)."""
  if isinstance(term, TaskLoss):
    return TaskLoss(term.objective, weight=term.weight * weight, name=term.name)
  return term


TECHNIQUE = Distillation()
