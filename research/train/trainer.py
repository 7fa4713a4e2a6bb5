"""The canonical training loop: data -> model -> optimizer -> sharded jitted steps.

    result = train_and_evaluate(config, workdir)

Reads top to bottom: the config (completed from `defaults.py`, checked), the active
techniques (`techniques.py`), the model's source (a pre-trained checkpoint, a saved run
with `config.init_from`, or random params: `source.py`), data, model, mesh and
shardings, optimizer (with freezing), what the techniques contribute (teachers, loss
terms, batch fields, state), the jitted step (`train_state.py`), resume, then the loop
(log, evaluate, checkpoint). The workdir is a run folder (`saved_runs`): config.json,
model.json (the architecture), tokenizer/, checkpoints/ and best/.

The trainer names no technique: quantization-aware training, LoRA, gradual pruning,
distillation and the parameter average each plug in through `Technique`
(`research/transforms/technique.py`).

A run killed at any point restarts from the workdir's latest checkpoint (params,
optimizer state, RNG and the data iterator's position), so a resumed run ends with
the same params as an uninterrupted one. Losses stay on the device between log,
evaluation and checkpoint steps (no per-step host sync); at each of those the pending
losses are checked, and a non-finite one stops the run before anything is evaluated or
saved, leaving the last good checkpoint untouched.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import distributed
from research.data import tasks
from research.data.batching import BatchIterator
from research.train import defaults, distillation, evaluation, run_config, saved_runs, sharding
from research.train import source as source_lib
from research.train import techniques, train_state
from research.train.build import build_model, load_corpus, load_split, uses_corpus
from research.train.checkpointing import Checkpoints, abstract_like
from research.train.metric_writer import MetricWriter
from research.train.optimizers import make_optimizer, schedule_from_config
from research.train.step import TaskLoss
from research.transforms import freeze
from research.transforms.technique import Setup


@dataclasses.dataclass
class _Data:
  spec: Any
  train_examples: list
  train_features: list
  eval_examples: list
  eval_features: list
  train_iter: Any


def _load_data(config, spec, tokenizer, vocab_size: int) -> _Data:
  """The train iterator (one batch per update: accumulate_steps micro-batches of
  batch_size) and the dev split; a corpus replaces the task's splits."""
  global_batch = config.batch_size * config.optimizer.accumulate_steps
  if uses_corpus(config):
    spec, train, eval_examples, eval_features, train_iter = load_corpus(
        config, tokenizer, vocab_size, global_batch)
    return _Data(spec, train, train, eval_examples, eval_features, train_iter)
  train_examples, train_features = load_split(config, spec, tokenizer, config.train_split,
                                              config.train_examples, training=True)
  eval_examples, eval_features = load_split(config, spec, tokenizer, config.eval_split,
                                            config.eval_examples)
  train_iter = BatchIterator(
      train_features, global_batch, max_length=config.max_length,
      pad_multiple=config.pad_multiple, shuffle=True, seed=config.seed,
      bucket_batches=config.bucket_batches, drop_remainder=True, num_epochs=None,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pad_id=tokenizer.pad_token_id or 0)
  return _Data(spec, train_examples, train_features, eval_examples, eval_features, train_iter)


def _optimizer_config(config, encoder_config, total_steps: int) -> dict:
  """`make_optimizer`'s fields: the config's, the run's length and the layer layout."""
  out = {k: v for k, v in config.optimizer.to_dict().items() if k != 'accumulate_steps'}
  out.update(total_steps=total_steps, num_layers=encoder_config.num_layers,
             attention_map=encoder_config.attention_map, ffn_map=encoder_config.ffn_map)
  return out


def check_config(config):
  """The config completed from the schema and checked (its generic fields and every
  technique's): what `train_and_evaluate` would refuse, found without loading anything."""
  config = defaults.complete(config)
  run_config.check(config)
  techniques.active(config)
  return config


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains `config.model` (or `config.init_from`) on `config.task`; returns metrics."""
  # -- Config and techniques --------------------------------------------------------
  config = check_config(config)
  on = techniques.active(config)
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    run_config.save(config, workdir)
  source = source_lib.load_source(config, on)
  if config.max_length > source.encoder.max_length:
    raise ValueError(f'config.max_length={config.max_length} exceeds the position table of '
                     f'the model ({source.encoder.max_length} positions)')

  # -- Data and model ----------------------------------------------------------------
  data = _load_data(config, tasks.get_task(config.task), source.tokenizer,
                    source.encoder.vocab_size)
  model = build_model(config, data.spec, source.encoder)
  model = model.clone(objective=model.objective.with_train_statistics(data.train_features))
  if jax.process_index() == 0:  # the run folder holds its architecture and tokenizer
    saved_runs.write_model(workdir, model)
    saved_runs.save_tokenizer(workdir, source.tokenizer)
  steps_per_epoch = len(data.train_iter)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  logging.info('%s: %d train / %d eval examples, %d updates (%d per epoch) of %d x %d',
               data.spec.name, len(data.train_examples), len(data.eval_examples),
               total_steps, steps_per_epoch, config.optimizer.accumulate_steps,
               config.batch_size)

  # -- Mesh, params and optimizer (freezing by optax partition: no state when frozen) --
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  dummy = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda r: model.init(r, dummy, jnp.ones_like(dummy)),
                         jax.random.PRNGKey(config.seed))['params']
  shardings = sharding.param_shardings(boxed, mesh)
  params = source_lib.initial_params(config, model, source, mesh, shardings,
                                     new=techniques.new_params(on, config))
  opt_config = _optimizer_config(config, source.encoder, total_steps)
  rules = techniques.freeze_rules(on, config, freeze.preset(config.freeze))
  tx = freeze.with_freezing(techniques.optimizer(on, config, make_optimizer(opt_config),
                                                 total_steps), params, rules)
  trainable, total = freeze.count_trainable(params, rules)

  # -- What the techniques bring: teachers, loss terms, batch fields, state ----------
  setup = Setup(data.spec, model.objective, source.tokenizer, source.encoder,
                data.train_features, workdir)
  teacher_models, teacher_params = techniques.teachers(on, config, setup)
  teacher_params = sharding.put(teacher_params, sharding.replicated(mesh))
  teacher_encoders = [t.encoder for t in teacher_models]
  terms = techniques.loss_terms(on, config, setup, [TaskLoss(model.objective)],
                                teacher_encoders)
  batch_fields = techniques.batch_fields(on, config, setup)
  owned = techniques.owned_state(on, config)
  # Terms' own params (projections) train with the same settings, without LLRD or
  # gradual unfreezing (they have no layers).
  step, state = train_state.build(
      model, params, tx, terms, mesh=mesh, labels=freeze.freeze_labels(params, rules),
      schedule=schedule_from_config(opt_config), seed=config.seed + 1,
      teachers=teacher_models, teacher_encoders=teacher_encoders,
      accumulate_steps=config.optimizer.accumulate_steps, owned=owned,
      aux_tx=make_optimizer({**opt_config, 'llrd': None, 'unfreeze_every': None}),
      aux_rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  evaluated = next((s.eval_params for s in owned.values() if s.eval_params), None)
  name = next((n for n, s in owned.items() if s.eval_params), None)

  def eval_params(state):
    return evaluated(state[name], state['params']) if evaluated else state['params']

  # -- Resume: the workdir's latest checkpoint wins ---------------------------------
  ckpt = Checkpoints(workdir, keep=config.keep_checkpoints)
  best = {'score': -math.inf, 'step': -1}
  if ckpt.latest_step() is not None:
    try:
      state, data_state = ckpt.restore(abstract_like(state))
    except ValueError as e:  # orbax: the saved tree or shapes differ from this config's
      raise ValueError(run_config.resume_mismatch(workdir, config, ckpt.latest_step(), e)
                       ) from e
    data.train_iter.load_state_dict(data_state['iterator'])
    best = data_state['best']
    logging.info('Resumed from step %d in %s', int(state['step']), workdir)

  # Distillation on a corpus: the dev metric the terms' loss on the dev sequences (with
  # the objective's own loss dropped, alpha = 1, the only meaningful one: best = lowest).
  dev_losses = (evaluation.term_losses(model, terms, teacher_models)
                if distillation.reports_dev_loss(config) else None)
  loop = _Loop(config, workdir, data, model, mesh, ckpt, eval_params, total_steps,
               dev_losses, distillation.selects_on_dev_loss(config))
  try:
    state, best, last_eval = loop.run(state, step, teacher_params, batch_fields, best)
  finally:
    ckpt.close()
  distributed.barrier('train_and_evaluate')  # process 0's files are complete for all
  return {'final': last_eval, 'best': best, 'steps': total_steps, 'trainable_params': trainable,
          'total_params': total, 'workdir': workdir, 'params': eval_params(state),
          'model': model, 'task': data.spec.name, 'main_metric': data.spec.main_metric}


class _Loop:
  """Steps, logging, evaluation and checkpoints of one run."""

  def __init__(self, config, workdir, data: _Data, model, mesh, ckpt, eval_params,
               total_steps: int, dev_losses=None, select_on_loss: bool = False):
    self.config, self.workdir, self.data, self.mesh = config, workdir, data, mesh
    self.ckpt, self.eval_params, self.total_steps = ckpt, eval_params, total_steps
    self.model = model
    self.dev_losses, self.select_on_loss = dev_losses, select_on_loss
    self.predict = evaluation.predict_fn(model)
    self.eval_every = config.eval_every or len(data.train_iter)
    self.checkpoint_every = config.checkpoint_every or self.eval_every

  def evaluate(self, state, teacher_params=()) -> dict[str, float]:
    c = self.config
    put = lambda b: sharding.put_global_batch(b, self.mesh)
    with self.mesh:
      metrics = evaluation.evaluate(
          self.model, self.eval_params(state), self.data.spec, self.data.eval_examples,
          self.data.eval_features, batch_size=c.eval_batch_size, max_length=c.max_length,
          pad_multiple=c.pad_multiple, predict=self.predict, put=put)
      if self.dev_losses is not None:
        losses = self.dev_losses(
            self.eval_params(state), self.data.eval_features,
            teacher_params=teacher_params, aux=state.get('aux'),
            batch_size=c.eval_batch_size, max_length=c.max_length,
            pad_multiple=c.pad_multiple, put=put)
        metrics['dev_loss'] = losses.pop('loss')
        metrics.update({f'dev_loss/{name}': value for name, value in losses.items()})
    return metrics

  def selection_score(self, metrics: dict[str, float]) -> float:
    """What the best checkpoint maximises: the main metric, or minus the dev loss."""
    if self.select_on_loss:
      return -metrics['dev_loss']
    return metrics[self.data.spec.main_metric]

  def run(self, state, step, teacher_params, batch_fields, best):
    c, data, ckpt = self.config, self.data, self.ckpt
    writer = MetricWriter(self.workdir)
    start = int(state['step'])
    progress = _Progress(start, self.total_steps)
    pending = _Pending()
    last_eval: dict[str, float] = {}
    seen, t0 = 0, time.perf_counter()
    try:
      for i in range(start + 1, self.total_steps + 1):
        batch = next(data.train_iter)
        index = batch.pop('index')
        batch.pop('idx', None)
        for fields in batch_fields:  # e.g. cached teacher targets, by feature index
          batch.update(fields(index))
        with self.mesh:
          state, metrics = step(state, sharding.put_batch(batch, self.mesh), teacher_params)
        pending.add(i, metrics['loss'])
        seen += int(batch['weights'].sum())
        log = i % c.log_every == 0 or i == self.total_steps
        evaluate = i % self.eval_every == 0 or i == self.total_steps
        save = i % self.checkpoint_every == 0 or i == self.total_steps
        if log or evaluate or save:  # nothing non-finite is logged, evaluated or saved
          pending.check(ckpt.latest_step(), self.workdir)
        if log:
          values = {k: float(v) for k, v in metrics.items()}
          values['examples_per_sec'] = seen / (time.perf_counter() - t0)
          writer.write(i, 'train', values)
          progress.update(i, values)
          seen, t0 = 0, time.perf_counter()
        if evaluate:
          last_eval = self.evaluate(state, teacher_params)
          writer.write(i, 'eval', last_eval)
          progress.message(f'step {i}: ' + ', '.join(f'{k} {v:.2f}'
                                                     for k, v in last_eval.items()))
          score = self.selection_score(last_eval)
          if score > best['score']:
            best = {'score': score, 'step': i}
            ckpt.save_best(i, self.eval_params(state), score, {'metrics': last_eval, 'step': i})
        if save:
          ckpt.save(i, state, {'iterator': data.train_iter.state_dict(), 'best': best})
      if start >= self.total_steps:  # a finished run started again: its final metrics
        last_eval = self.evaluate(state, teacher_params)
    finally:
      writer.close()
      progress.close()
    return state, best, last_eval


class _Pending:
  """Device losses since the last check: finiteness is read only where it matters."""

  def __init__(self):
    self.losses: list[tuple[int, jax.Array]] = []

  def add(self, step: int, loss: jax.Array) -> None:
    self.losses.append((step, loss))

  def check(self, last_good: int | None, workdir: str) -> None:
    if not self.losses:
      return
    values = np.asarray(jnp.stack([loss for _, loss in self.losses]))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      step, value = self.losses[bad[0]][0], values[bad[0]]
      raise FloatingPointError(
          f'Loss is {value} at step {step}; stopping without saving. The last good '
          f'checkpoint (step {last_good}) in {workdir} is untouched: lower the '
          'learning rate or enable gradient clipping, then rerun to resume from it.')
    self.losses.clear()


class _Progress:
  """On a terminal, a tqdm bar with loss, learning rate and examples/s; elsewhere
  (notebooks, CI logs, files) one plain line per tenth of the run, so stored outputs
  stay readable."""

  def __init__(self, start: int, total: int):
    self.quiet = not distributed.is_primary()  # one job, one progress report
    self.interactive = sys.stderr.isatty() and not self.quiet
    self.last, self.total = start, total
    self.every = max(1, total // 10)
    self.next_line = start + self.every
    if self.interactive:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, initial=start, dynamic_ncols=True, mininterval=1.0)

  def update(self, step: int, values: dict[str, float]) -> None:
    if self.interactive:
      self.bar.update(step - self.last)
      self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['learning_rate']:.2e}",
                           ex_s=f"{values['examples_per_sec']:.1f}")
    elif self.quiet:
      pass
    elif step >= self.next_line or step == self.total:
      print(f"step {step}/{self.total}: loss {values['loss']:.4f}, learning rate "
            f"{values['learning_rate']:.2e}, {values['examples_per_sec']:.1f} examples/s",
            flush=True)
      self.next_line = step + self.every
    self.last = step

  def message(self, text: str) -> None:
    if self.interactive:
      self.bar.write(text)
    elif not self.quiet:
      print(text, flush=True)

  def close(self) -> None:
    if self.interactive:
      self.bar.close()
