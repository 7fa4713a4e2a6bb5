"""Evaluation: run a jitted predict function over every example once, score it.

Batches come from a non-shuffled `BatchIterator` whose last batch is padded with
weight-0 rows; predictions are gathered per feature by the batch's 'index' field, so
no example is dropped or counted twice. Scores come from `evaluate.metrics.compute`
with the task's official metrics (in percent).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from research.data import tasks
from research.data.batching import BatchIterator
from research.data.squad_features import squad_postprocess
from research.data.tokenize import word_level_predictions
from research.evaluate import metrics


def gather_predictions(predict: Callable[[dict], Any], features: Sequence[dict],
                       batch_size: int, max_length: int, pad_multiple: int,
                       put: Callable[[dict], dict] = lambda b: b) -> list[Any]:
  """Per-feature host outputs of `predict` (numpy), in feature order."""
  # Batches of similar length (the whole set sorted): short rows are not padded to
  # long ones. Outputs go back to feature order through each batch's 'index'.
  iterator = BatchIterator(features, batch_size, max_length=max_length,
                           pad_multiple=pad_multiple, shuffle=False, num_epochs=1,
                           bucket_batches=-(-len(features) // batch_size))
  outputs: list[Any] = [None] * len(features)
  for batch in iterator:
    index = batch['index']
    out = predict(put({k: v for k, v in batch.items() if k not in ('index', 'idx')}))
    out = {k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else np.asarray(out)
    for row, feature in enumerate(index):
      if feature >= 0:
        outputs[feature] = ({k: v[row] for k, v in out.items()} if isinstance(out, dict)
                            else out[row])
  return outputs


def score(spec: tasks.TaskSpec, examples: Sequence[dict], features: Sequence[dict],
          outputs: Sequence[Any]) -> dict[str, float]:
  """The task's metrics from per-feature outputs (class ids, scores, tags, span logits)."""
  if spec.kind in ('classification', 'regression'):
    predictions = np.asarray(outputs)
    references = np.asarray([f['labels'] for f in features])
    return metrics.compute(spec, predictions, references)
  if spec.kind == 'tagging':
    refs, preds = word_level_predictions([f['labels'] for f in features], outputs)
    return metrics.compute(spec, preds, refs)
  answers = squad_postprocess(examples, features, [o['start'] for o in outputs],
                              [o['end'] for o in outputs])
  return metrics.compute(spec, answers, examples)
