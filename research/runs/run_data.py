"""A saved run with its tokenizer and data: what every run-level stage starts from.

    data = load('runs/sst2:best', eval_examples=512)
    score = data.score(data.run.model, data.run.params)       # main dev metric
    _, sample = data.split('train', 512, training=True)      # an importance sample
    for batch in data.batches(sample): ...
    data.write('runs/pruned', model, params, {'transform': 'prune'})

Each stage (transform, prune, distil, measure, score) used to repeat "load the run,
its tokenizer, a split, a BatchIterator"; this is that, once, with the run's own
config (max_length, padding, batch sizes) applied everywhere.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from research.data import tasks
from research.data.batching import BatchIterator
from research.train import evaluation, saved_runs
from research.train.build import load_split


@dataclasses.dataclass
class RunData:
  """A saved run, its config and tokenizer, and the splits stages read.

  Attributes:
    run: the `saved_runs.SavedRun` (model, params, spec, step).
    ref: 'folder:which', as the run was named.
    config: the run's trainer config (with any data_dir override applied).
    tokenizer: the run's own tokenizer.
    eval_examples: dev examples scored (0 = all).
  """
  run: saved_runs.SavedRun
  ref: str
  config: Any
  tokenizer: Any
  eval_examples: int = 0
  _dev: tuple | None = None
  _predict: dict = dataclasses.field(default_factory=dict)

  @property
  def metric(self) -> str:
    return self.run.spec.main_metric

  @property
  def folder(self) -> str:
    return self.run.workdir

  def split(self, split: str, limit: int = 0, training: bool = False) -> tuple[list, list]:
    """(examples, features) of a split of the run's task; the first `limit` if > 0.
    `training=True` encodes what the loss reads (span tasks' answer positions)."""
    return load_split(self.config, self.run.spec, self.tokenizer, split, limit, training)

  @property
  def dev(self) -> tuple[list, list]:
    """(examples, features) of the run's eval split (read once)."""
    if self._dev is None:
      self._dev = self.split(self.config.eval_split, self.eval_examples)
    return self._dev

  def batches(self, features, batch_size: int | None = None) -> BatchIterator:
    """One ordered pass over `features` in the run's batching."""
    c = self.config
    return BatchIterator(features, batch_size or c.eval_batch_size, max_length=c.max_length,
                         pad_multiple=c.pad_multiple, num_epochs=1,
                         pad_id=self.tokenizer.pad_token_id or 0)

  def outputs(self, model, params, features=None) -> list:
    """Per-feature predictions of `model` with `params` (the objective's
    `predict_batch` outputs, numpy) on the dev split or `features`, in order; one
    compiled predictor per architecture."""
    if features is None:
      features = self.dev[1]
    if model not in self._predict:
      self._predict[model] = evaluation.predict_fn(model)
    c = self.config
    predict = self._predict[model]
    return evaluation.gather_predictions(lambda b: predict(params, b), features,
                                         c.eval_batch_size, c.max_length, c.pad_multiple)

  def evaluate(self, model, params, examples=None, features=None, outputs=None
               ) -> dict[str, float]:
    """Every metric of `model` with `params` on the dev split (or the given one);
    `outputs` = its outputs there when the caller has them already."""
    if examples is None:
      examples, features = self.dev
    if outputs is None:
      outputs = self.outputs(model, params, features)
    return model.objective.score(self.run.spec, examples, features, outputs)

  def score(self, model, params) -> float:
    """The task's main dev metric."""
    return float(self.evaluate(model, params)[self.metric])

  def write(self, out: str, model, params, info: dict | None = None) -> str:
    """Writes `model` with `params` as a new run folder carrying this run's config and
    tokenizer; `info` records how it was made (beside 'source')."""
    return saved_runs.write_run(out, model, params, config=self.run.config,
                                tokenizer=self.tokenizer,
                                info={'source': self.ref, **(info or {})})


def load(ref: str, *, data_dir: str | None = None, eval_examples: int | None = None
         ) -> RunData:
  """A run ('folder', 'folder:best' or 'folder:latest') with its tokenizer.

  Args:
    ref: the run.
    data_dir: read the task's data from here instead of the run's config.data_dir.
    eval_examples: dev examples scored (None = the run's config.eval_examples; 0 = all).
  """
  folder, which = saved_runs.parse_ref(ref)
  run = saved_runs.load_run(folder, which)
  config = run.config.copy_and_resolve_references()
  if data_dir:
    config.data_dir = data_dir
  tokenizer = saved_runs.run_tokenizer(folder, config)
  limit = config.eval_examples if eval_examples is None else eval_examples
  return RunData(run, f'{os.path.abspath(folder)}:{which}', config, tokenizer, limit)


def main_metric(ref: str) -> str:
  """The main metric of a run's task, read from its config alone."""
  return tasks.get_task(saved_runs.run_config(saved_runs.parse_ref(ref)[0]).task).main_metric
