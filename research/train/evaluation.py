"""Evaluation: run a model over every example once, score it with its objective.

    scores = evaluate(model, params, spec, examples, features, batch_size=128,
                      max_length=128, pad_multiple=16)

Batches come from `research.evaluate.gather`: a non-shuffled, length-sorted
`BatchIterator` whose last batch is padded with weight-0 rows; predictions are
gathered per feature by the batch's 'index' field, so no example is dropped or counted
twice. The model's objective turns outputs into predictions and scores them with the
task's official metrics (in percent). `term_losses` averages loss terms (e.g.
distillation's) over the same batches: the dev metric of a run whose only terms are
distillation terms.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from research.data import tasks
from research.evaluate import gather
from research.train import step as step_lib


def gather_predictions(predict: Callable[[dict], Any], features: Sequence[dict],
                       batch_size: int, max_length: int, pad_multiple: int,
                       put: Callable[[dict], dict] = lambda b: b) -> list[Any]:
  """Per-feature host outputs of `predict` (numpy), in feature order."""
  return gather.gather_outputs(predict, features, batch_size, max_length=max_length,
                               pad_multiple=pad_multiple, put=put)


def predict_fn(model) -> Callable[[Any, dict], Any]:
  """A jitted `predict(params, batch)`: the objective's predictions, dropout off."""
  @jax.jit
  def predict(params, batch):
    outputs = model.apply({'params': params}, batch['input_ids'], batch['attention_mask'],
                          batch.get('token_type_ids'), deterministic=True)[0]
    return model.objective.predict_batch(outputs, batch)
  return predict


def evaluate(model, params, spec: tasks.TaskSpec, examples: Sequence[dict],
             features: Sequence[dict], *, batch_size: int, max_length: int,
             pad_multiple: int, put: Callable[[dict], dict] = lambda b: b,
             predict: Callable[[Any, dict], Any] | None = None) -> dict[str, float]:
  """The task's metrics of `model` with `params` on encoded `features`.

  Args:
    model: a TaskModel (its objective predicts and scores).
    params: its params.
    spec: the task.
    examples, features: a split's examples and their encoded features.
    batch_size, max_length, pad_multiple: batching of the features.
    put: places each batch (e.g. onto a device mesh).
    predict: a `predict_fn(model)` to reuse (its compilations) across calls.
  """
  predict = predict or predict_fn(model)
  outputs = gather_predictions(lambda b: predict(params, b), features, batch_size,
                               max_length, pad_multiple, put=put)
  return model.objective.score(spec, examples, features, outputs)


def term_losses(model, terms: Sequence[Any], teachers: Sequence[Any] = ()
                ) -> Callable[..., dict[str, float]]:
  """`losses(params, features, *, teacher_params=(), aux=None, batch_size, max_length,
  pad_multiple, put) -> {term name: mean, 'loss': weighted sum}`.

  Every term runs without dropout over every feature once (the batches of `evaluate`);
  each term's per-batch value is weighted by its units in the batch (`term.count`: real
  rows, tokens), so the mean is over units, not batches.
  """
  loss_fn = step_lib.make_loss_fn(model, terms, teachers, train=False)

  @jax.jit
  def batch_terms(params, batch, teacher_params, aux):
    _, metrics = loss_fn(params, batch, None, teacher_params, aux=aux)
    return {t.name: (metrics[t.name], t.count(batch)) for t in terms}

  def losses(params, features, *, teacher_params=(), aux=None, batch_size: int,
             max_length: int, pad_multiple: int, put=lambda b: b) -> dict[str, float]:
    sums = {t.name: np.zeros(2) for t in terms}
    # The batches of `evaluate`; the padding rows of the last have weight 0, which no
    # term counts.
    for _, batch in gather.eval_batches(features, batch_size, max_length=max_length,
                                        pad_multiple=pad_multiple):
      for name, (value, count) in batch_terms(params, put(batch), teacher_params,
                                              aux).items():
        sums[name] += (float(value) * float(count), float(count))
    means = {name: total / max(count, 1e-9) for name, (total, count) in sums.items()}
    means['loss'] = sum(t.weight * means[t.name] for t in terms)
    return means
  return losses
