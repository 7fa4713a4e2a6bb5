"""Evaluation: run a model over every example once, score it with its objective.

    scores = evaluate(model, params, spec, examples, features, batch_size=128,
                      max_length=128, pad_multiple=16)

Batches come from `research.evaluate.gather`: a non-shuffled, length-sorted
`BatchIterator` whose last batch is padded with weight-0 rows; predictions are
gathered per feature by the batch's 'index' field, so no example is dropped or counted
twice. The model's objective turns outputs into predictions and scores them with the
task's official metrics (in percent).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

from research.data import tasks
from research.evaluate import gather


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
