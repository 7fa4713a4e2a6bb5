"""The integer-only model beside its fake-quant twin, and how far the twin itself moves.

    report = compare('runs/fq:best')      # a fully quantized (QAT) run

A fully quantized model with dynamic per-tensor grids is chaotic at the scale of its own
rounding: each grid's scale is the batch's largest value, so any change, however small,
moves scales and flips roundings everywhere downstream. Its dev accuracy therefore moves
under perturbations far below one grid step, and "the integer model within x points of
its twin" is only meaningful beside that band. `compare` scores the twin, the twin with
every non-linearity's output scaled by 1 + eps for each eps in `perturbations` (the
'scaled' family below; 1e-4 is about 1/80 of an 8-bit step), and the integer-only model
(`integer_only.py`); for classifiers also each model's per-example agreement with the
twin's predictions.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from research.models import nonlinear
from research.runs import run_data
from research.transforms import integer_only

PERTURBATIONS = (1e-4, -1e-4, 3e-4, -3e-4, 1e-3, -1e-3)


class Scaled(nonlinear.Nonlinear):
  """The float non-linearities with outputs scaled by 1 + eps (a probe, not a model)."""

  def __init__(self, eps: str):
    self.factor = 1.0 + float(eps)

  def softmax(self, scores, bias):
    return super().softmax(scores, bias) * self.factor

  def activation(self, name, x):
    return super().activation(name, x) * self.factor

  def layer_norm(self, x, scale, bias, eps):
    return super().layer_norm(x, scale, bias, eps) * self.factor


nonlinear.register('scaled', Scaled)


def _labels(outputs: list) -> np.ndarray | None:
  """Predicted classes of a classifier's outputs (one integer per example); None for
  other objectives (regression scores, spans, tags)."""
  first = np.asarray(outputs[0]) if outputs else None
  if first is None or first.ndim != 0 or not np.issubdtype(first.dtype, np.integer):
    return None
  return np.asarray([int(o) for o in outputs])


def compare(run_ref: str, perturbations: Sequence[float] = PERTURBATIONS,
            eval_examples: int = 0, data_dir: str | None = None) -> dict[str, Any]:
  """Scores of a fully quantized run, its perturbed twins and its integer-only model.

  Returns:
    {'metric', 'twin', 'integer', 'gap' (integer - twin), 'perturbed' {eps: score},
     'band' {'min', 'max', 'mean', 'std'} over the perturbed twins,
     'agreement' {'integer', eps: ...} (share of dev examples predicted as the twin does;
     classifiers only), 'examples', 'seconds'}.
  """
  start = time.time()
  data = run_data.load(run_ref, data_dir=data_dir, eval_examples=eval_examples or None)
  model, params = data.run.model, data.run.params
  scored, labels = {}, {}
  encoders = {'twin': model.encoder, 'integer': integer_only.integer_only(model.encoder)}
  encoders.update({eps: model.encoder.replace(nonlinear=(('.*', f'scaled:{eps!r}'),))
                   for eps in perturbations})
  for name, encoder in encoders.items():
    variant = model.clone(encoder=encoder)
    outputs = data.outputs(variant, params)
    scored[name] = float(data.evaluate(variant, params, outputs=outputs)[data.metric])
    labels[name] = _labels(outputs)
  band = np.asarray([scored[eps] for eps in perturbations])
  report = {'metric': data.metric, 'twin': scored['twin'], 'integer': scored['integer'],
            'gap': scored['integer'] - scored['twin'],
            'perturbed': {repr(eps): scored[eps] for eps in perturbations},
            'examples': len(data.dev[1])}
  if len(band):
    report['band'] = {'min': float(band.min()), 'max': float(band.max()),
                      'mean': float(band.mean()), 'std': float(band.std())}
  if labels['twin'] is not None:
    report['agreement'] = {(k if isinstance(k, str) else repr(k)):
                           float(np.mean(labels[k] == labels['twin']))
                           for k in labels if k != 'twin'}
  report['seconds'] = round(time.time() - start, 1)
  return report
