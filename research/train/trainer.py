"""The canonical fine-tuning loop: data -> model -> optimizer -> sharded jitted steps.

    result = train_and_evaluate(config, workdir)

Reads top to bottom: config checks, data, model, mesh and shardings, optimizer
(with freezing), resume, the jitted steps, then the loop (log, evaluate, checkpoint).
A run killed at any point restarts from the workdir's latest checkpoint (params,
optimizer state, RNG and the data iterator's position), so a resumed run ends with
the same params as an uninterrupted one. A non-finite loss stops the run before
anything is saved, leaving the last good checkpoint untouched. With
`config.distill.teachers`, saved runs' outputs join the labels as soft targets
(`research/train/teachers.py`); the log then splits the loss into task and distill parts.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.checkpoints import load_pretrained, load_tokenizer
from research.data import tasks
from research.data.batching import BatchIterator
from research.data.sources import load_examples
from research.data.tokenize import encode
from research.models.heads import TaskModel, loss_fn, predictions
from research.train import averaging, evaluation, sharding
from research.train import teachers as teachers_lib
from research.train.checkpointing import Checkpoints, abstract_like
from research.train.metric_writer import MetricWriter
from research.train.optimizers import make_optimizer, schedule_from_config
from research.transforms import distill, freeze


def check_config(config) -> None:
  """Fails fast, naming the field, on values the loop cannot use."""
  positive = ('batch_size', 'max_length', 'pad_multiple', 'log_every')
  for name in positive:
    if config[name] <= 0:
      raise ValueError(f'config.{name} must be positive, got {config[name]}')
  for name in ('num_epochs', 'total_steps', 'eval_every', 'checkpoint_every'):
    if config[name] < 0:
      raise ValueError(f'config.{name} must be >= 0, got {config[name]}')
  if not config.num_epochs and not config.total_steps:
    raise ValueError('Set config.num_epochs or config.total_steps (both are 0)')
  if config.optimizer.learning_rate < 0:
    raise ValueError(f'config.optimizer.learning_rate must be >= 0, got '
                     f'{config.optimizer.learning_rate}')
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f'config.ema_decay must be in [0, 1) (0 = off), got {config.ema_decay}')
  if config.keep_checkpoints < 1:
    raise ValueError(f'config.keep_checkpoints must be >= 1, got {config.keep_checkpoints}')
  distill_config = config.get('distill')
  if distill_config and distill_config.teachers:
    if not 0.0 <= distill_config.alpha <= 1.0:
      raise ValueError(f'config.distill.alpha must be in [0, 1], got {distill_config.alpha}')
    if distill_config.temperature <= 0:
      raise ValueError(f'config.distill.temperature must be positive, got '
                       f'{distill_config.temperature}')
    if distill_config.checkpoint not in ('best', 'latest'):
      raise ValueError("config.distill.checkpoint must be 'best' or 'latest', got "
                       f'{distill_config.checkpoint!r}')


def _slice(examples: list, n: int) -> list:
  return examples[:n] if n else examples


def save_config(config, workdir: str) -> str:
  """Writes the run's config to `workdir/config.json`; returns the path written.

  A resumed run whose config differs keeps the original file and writes its own beside
  it (`config.1.json`, ...), so what a checkpoint was trained with is never lost.
  """
  text = config.to_json_best_effort(indent=2, sort_keys=True) + '\n'
  path = os.path.join(workdir, 'config.json')
  n = 0
  while os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return path
    n += 1
    path = os.path.join(workdir, f'config.{n}.json')
  if n:
    logging.warning('The config differs from the one this workdir was started with; '
                    'saving it as %s', path)
  with open(path, 'w') as f:
    f.write(text)
  return path


def build_model(config, spec: tasks.TaskSpec, encoder_config) -> TaskModel:
  """The task model a config describes (encoder + layer mix + head)."""
  num_labels = max(len(spec.label_names), 2) if spec.kind != 'regression' else 1
  return TaskModel(encoder_config, spec.kind, num_labels, layer_mix=config.layer_mix,
                   pooling=config.pooling, head_hidden=config.head_hidden,
                   head_dropout=config.dropout)


def load_split(config, spec: tasks.TaskSpec, tokenizer, split: str, limit: int = 0,
               training: bool = False) -> tuple[list, list]:
  """(examples, encoded features) of one split; the first `limit` examples if > 0."""
  examples = _slice(load_examples(spec, split, config.data_dir or None, config.data_source),
                    limit)
  features = encode(spec, examples, tokenizer, config.max_length, config.doc_stride,
                    training=training).features
  return examples, features


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """Fine-tunes `config.model` on `config.task`; returns the final and best metrics."""
  check_config(config)
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  spec = tasks.get_task(config.task)
  if jax.process_index() == 0:
    save_config(config, workdir)

  # -- Data ------------------------------------------------------------------------
  tokenizer = load_tokenizer(config.model)
  train_examples, train_features = load_split(config, spec, tokenizer, config.train_split,
                                              config.train_examples, training=True)
  eval_examples, eval_features = load_split(config, spec, tokenizer, config.eval_split,
                                            config.eval_examples)
  train_iter = BatchIterator(
      train_features, config.batch_size, max_length=config.max_length,
      pad_multiple=config.pad_multiple, shuffle=True, seed=config.seed,
      bucket_batches=config.bucket_batches, drop_remainder=True, num_epochs=None,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pad_id=tokenizer.pad_token_id or 0)
  steps_per_epoch = len(train_iter)
  distill_config = config.get('distill')
  teachers = distill_config.teachers if distill_config else ''
  # [train features, ...] soft targets, looked up by each batch's feature indices.
  targets = (teachers_lib.soft_targets(config, spec, tokenizer, train_features, workdir)
             if teachers else None)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  logging.info('%s: %d train / %d eval examples, %d steps (%d per epoch)', spec.name,
               len(train_examples), len(eval_examples), total_steps, steps_per_epoch)

  # -- Model -----------------------------------------------------------------------
  encoder_config, encoder_params = load_pretrained(
      config.model, dtype=config.dtype, hidden_dropout=config.dropout,
      attention_dropout=config.dropout)
  if config.max_length > encoder_config.max_length:
    raise ValueError(f'config.max_length={config.max_length} exceeds the position table of '
                     f'{config.model} ({encoder_config.max_length} positions)')
  model = build_model(config, spec, encoder_config)
  rng = jax.random.PRNGKey(config.seed)
  dummy = jnp.zeros((1, 8), jnp.int32)
  init = functools.partial(model.init, input_ids=dummy, attention_mask=jnp.ones_like(dummy))
  boxed = jax.eval_shape(init, rng)['params']

  # -- Mesh and shardings -------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  shardings = sharding.param_shardings(boxed, mesh)
  # Only the head and mix are initialised here: dropping the encoder from the jitted
  # init's outputs lets XLA skip its random init (no second copy of a large model).
  head_shardings = {k: v for k, v in shardings.items() if k != 'encoder'}
  with mesh:
    params = jax.jit(lambda r: {k: v for k, v in nn.meta.unbox(init(r)['params']).items()
                                if k != 'encoder'}, out_shardings=head_shardings)(rng)
  params = dict(params)
  params['encoder'] = jax.device_put(encoder_params, shardings['encoder'])

  # -- Optimizer (freezing by optax partition: frozen params hold no state) ---------
  opt_config = {**config.optimizer.to_dict(), 'total_steps': total_steps}
  rules = freeze.preset(config.freeze)
  tx = freeze.with_freezing(make_optimizer(opt_config), params, rules)
  schedule = schedule_from_config(opt_config)
  trainable, total = freeze.count_trainable(params, rules)
  # A wholly frozen encoder (feature extraction) is cut out of the backward pass, so
  # XLA skips its gradients instead of computing and then discarding them.
  labels = freeze.freeze_labels(params, rules)
  encoder_frozen = all(label == 'freeze' for label in jax.tree.leaves(labels['encoder']))
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'opt_state': jax.jit(tx.init)(params), 'rng': jax.random.PRNGKey(config.seed + 1)}
  ema_decay = config.ema_decay
  if ema_decay:  # evaluation, best checkpoint and the returned params use the average
    state['ema'] = jax.jit(averaging.init)(params)
  # Pin every leaf to a sharding on the mesh and make the step return the same ones:
  # otherwise step 2 sees differently placed inputs than step 1 and compiles again.
  state_shardings = jax.tree.map(lambda x: sharding.on_mesh(x, mesh), state)
  state = jax.device_put(state, state_shardings)

  # -- Resume: the workdir's latest checkpoint wins ---------------------------------
  ckpt = Checkpoints(workdir, keep=config.keep_checkpoints)
  best = {'score': -math.inf, 'step': -1}
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(abstract_like(state))
    train_iter.load_state_dict(data_state['iterator'])
    best = data_state['best']
    logging.info('Resumed from step %d in %s', int(state['step']), workdir)

  # -- Steps --------------------------------------------------------------------------
  def forward(params, batch, train, rng=None):
    return model.apply({'params': params}, batch['input_ids'], batch['attention_mask'],
                       batch.get('token_type_ids'), deterministic=not train,
                       rngs={'dropout': rng} if train else None)[0]

  @functools.partial(jax.jit, donate_argnums=0, out_shardings=(state_shardings, None))
  def train_step(state, batch):
    step_rng = jax.random.fold_in(state['rng'], state['step'])

    def loss(params):
      if encoder_frozen:
        params = {**params, 'encoder': jax.lax.stop_gradient(params['encoder'])}
      logits = forward(params, batch, True, step_rng)
      value = loss_fn(spec.kind, logits, batch)[0]
      if targets is None:
        return value, {}
      soft = distill.soft_loss(spec.kind, logits, batch['teacher'], batch['weights'],
                               distill_config.temperature)
      mixed = (1 - distill_config.alpha) * value + distill_config.alpha * soft
      return mixed, {'task_loss': value, 'distill_loss': soft}

    (value, parts), grads = jax.value_and_grad(loss, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    # The norm covers trainable gradients only: reading frozen ones would force XLA to
    # compute them, and they never move a parameter.
    trainable_grads = [g for g, label in zip(jax.tree.leaves(grads), jax.tree.leaves(labels))
                       if label == 'train']
    metrics = {'loss': value, 'grad_norm': optax.global_norm(trainable_grads),
               'param_norm': optax.global_norm(params),
               'learning_rate': schedule(state['step']), **parts}
    new_state = {**state, 'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}
    if ema_decay:
      new_state['ema'] = averaging.update(state['ema'], params, state['step'], ema_decay)
    return new_state, metrics

  def eval_params(state):
    return averaging.as_params(state['ema'], state['params']) if ema_decay else state['params']

  @jax.jit
  def predict_step(params, batch):
    return predictions(spec.kind, forward(params, batch, False))

  def run_eval(params) -> dict[str, float]:
    outputs = evaluation.gather_predictions(
        lambda b: predict_step(params, b), eval_features, config.eval_batch_size,
        config.max_length, config.pad_multiple, put=lambda b: sharding.put_batch(b, mesh))
    return evaluation.score(spec, eval_examples, eval_features, outputs)

  # -- Loop ---------------------------------------------------------------------------
  writer = MetricWriter(workdir)
  eval_every = config.eval_every or steps_per_epoch
  checkpoint_every = config.checkpoint_every or eval_every
  start = int(state['step'])
  progress = _Progress(start, total_steps)
  last_eval: dict[str, float] = {}
  seen, t0 = 0, time.perf_counter()
  try:
    for step in range(start + 1, total_steps + 1):
      batch = next(train_iter)
      index = batch.pop('index')
      batch.pop('idx', None)
      if targets is not None:  # padding rows (-1) get any target: their weight is 0
        batch['teacher'] = targets[np.maximum(index, 0)]
      with mesh:
        state, metrics = train_step(state, sharding.put_batch(batch, mesh))
      seen += int(batch['weights'].sum())
      loss_value = float(metrics['loss'])
      if not math.isfinite(loss_value):
        raise FloatingPointError(
            f'Loss is {loss_value} at step {step}; stopping without saving. The last good '
            f'checkpoint (step {ckpt.latest_step()}) in {workdir} is untouched: lower the '
            'learning rate or enable gradient clipping, then rerun to resume from it.')
      if step % config.log_every == 0 or step == total_steps:
        values = {k: float(v) for k, v in metrics.items()}
        values['examples_per_sec'] = seen / (time.perf_counter() - t0)
        writer.write(step, 'train', values)
        progress.update(step, values)
        seen, t0 = 0, time.perf_counter()
      if step % eval_every == 0 or step == total_steps:
        with mesh:
          last_eval = run_eval(eval_params(state))
        writer.write(step, 'eval', last_eval)
        progress.message(f'step {step}: ' + ', '.join(f'{k} {v:.2f}' for k, v in last_eval.items()))
        score = last_eval[spec.main_metric]
        if score > best['score']:
          best = {'score': score, 'step': step}
          ckpt.save_best(step, eval_params(state), score, {'metrics': last_eval, 'step': step})
      if step % checkpoint_every == 0 or step == total_steps:
        ckpt.save(step, state, {'iterator': train_iter.state_dict(), 'best': best})
  finally:
    ckpt.close()
    writer.close()
    progress.close()
  return {'final': last_eval, 'best': best, 'steps': total_steps, 'trainable_params': trainable,
          'total_params': total, 'workdir': workdir, 'params': eval_params(state),
          'model': model}


class _Progress:
  """A tqdm bar showing loss, learning rate and examples/s (plain logging without a tty)."""

  def __init__(self, start: int, total: int):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    self.bar = tqdm(total=total, initial=start, dynamic_ncols=True, mininterval=1.0)
    self.last = start

  def update(self, step: int, values: dict[str, float]) -> None:
    self.bar.update(step - self.last)
    self.last = step
    self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['learning_rate']:.2e}",
                         ex_s=f"{values['examples_per_sec']:.1f}")

  def message(self, text: str) -> None:
    self.bar.write(text)

  def close(self) -> None:
    self.bar.close()
