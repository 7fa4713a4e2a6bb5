"""The canonical fine-tuning loop: data -> model -> optimizer -> sharded jitted steps.

    result = train_and_evaluate(config, workdir)

Reads top to bottom: config checks, the model's source (a pre-trained checkpoint, or a
saved run with `config.init_from`), data, model, mesh and shardings, optimizer (with
freezing), resume, the jitted step (`research/train/step.py`), then the loop (log,
evaluate, checkpoint). The workdir is a run folder (`saved_runs`): config.json,
model.json (the architecture), tokenizer/, checkpoints/ and best/.

A run killed at any point restarts from the workdir's latest checkpoint (params,
optimizer state, RNG and the data iterator's position), so a resumed run ends with
the same params as an uninterrupted one. Losses stay on the device between log,
evaluation and checkpoint steps (no per-step host sync); at each of those the pending
losses are checked, and a non-finite one stops the run before anything is evaluated or
saved, leaving the last good checkpoint untouched. With `config.distill.teachers`,
saved runs teach the student: their cached outputs as soft targets, or the frozen
teachers run inside the step (`distill.mode='in_step'`), which can also teach hidden
states, attention maps and self-attention relations (`distill.hidden_weight`,
`attention_weight`, `relation_weight`; `research/transforms/distill_intermediate.py`).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.checkpoints import load_pretrained, load_tokenizer, resolve
from research.checkpoints.hf_load import check_tokenizer_fits, read_config
from research.data import tasks
from research.data.batching import BatchIterator
from research.models.config import EncoderConfig
from research.train import averaging, evaluation, saved_runs, sharding
from research.train import teachers as teachers_lib
from research.train.build import build_model, load_corpus, load_split, uses_corpus
from research.train.checkpointing import Checkpoints, abstract_like
from research.train.metric_writer import MetricWriter
from research.train.optimizers import make_optimizer, schedule_from_config
from research.train.step import TaskLoss, init_state, make_train_step
from research.train.step import add_aux, init_aux
from research.transforms import distill_intermediate
from research.transforms import distill, freeze, quantize
from research.transforms import sparsity

DISTILL_MODES = ('cached', 'in_step')
# config.distill weights of the terms over intermediates (distill_intermediate.py).
INTERMEDIATE_WEIGHTS = ('hidden_weight', 'attention_weight', 'relation_weight')


def check_config(config) -> None:
  """Fails fast, naming the field, on values the loop cannot use."""
  if config.get('scratch') and config.get('init_from'):
    raise ValueError('config.scratch (random params) and config.init_from (a saved run) '
                     'exclude each other; set one')
  if config.get('scratch'):
    scratch_fields(config.scratch)  # raises naming an unknown field
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
  accumulate = config.optimizer.get('accumulate_steps', 1)
  if not isinstance(accumulate, int) or accumulate < 1:
    raise ValueError(f'config.optimizer.accumulate_steps must be an int >= 1, got {accumulate}')
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
    if distill_config.checkpoint not in saved_runs.WHICH:
      raise ValueError("config.distill.checkpoint must be 'best' or 'latest', got "
                       f'{distill_config.checkpoint!r}')
    if distill_config.get('mode', 'cached') not in DISTILL_MODES:
      raise ValueError(f'config.distill.mode must be one of {DISTILL_MODES}, got '
                       f'{distill_config.mode!r}')
  if distill_config:
    intermediate = [f for f in INTERMEDIATE_WEIGHTS if distill_config.get(f, 0.0)]
    for name in INTERMEDIATE_WEIGHTS:
      if distill_config.get(name, 0.0) < 0:
        raise ValueError(f'config.distill.{name} must be >= 0 (0 = off), got '
                         f'{distill_config[name]}')
    if distill_config.get('relation_heads', 0) < 0:
      raise ValueError(f'config.distill.relation_heads must be >= 0 (0 = the student\'s '
                       f'heads), got {distill_config.relation_heads}')
    if intermediate and not distill_config.teachers:
      raise ValueError(f'config.distill.{intermediate[0]} > 0 needs config.distill.teachers')
    if intermediate and distill_config.get('mode', 'cached') != 'in_step':
      raise ValueError(f'config.distill.{intermediate[0]} > 0 distils intermediates, which '
                       "needs the teachers in the step: set config.distill.mode='in_step'")


def loss_terms(config, objective, student_config, teacher_configs=(),
               in_step: bool = False) -> list:
  """The step's loss terms from `config.distill`: the task loss, the soft targets
  (cached or from in-step teachers) and the intermediate terms of nonzero weight, each
  checked against the student's and teachers' encoder configs (layer maps, heads)."""
  cfg = config.get('distill')
  if not (cfg and cfg.teachers):
    return [TaskLoss(objective)]
  alpha = cfg.alpha
  soft = (distill.TeacherSoftTargets if in_step else distill.SoftTargets)(
      objective, cfg.temperature, weight=alpha)
  terms = [TaskLoss(objective, weight=1 - alpha), soft]
  layer_map = cfg.get('layer_map', 'uniform')
  if cfg.get('hidden_weight', 0.0):
    terms.append(distill_intermediate.HiddenStateMSE(layer_map, cfg.hidden_weight))
  if cfg.get('attention_weight', 0.0):
    terms.append(distill_intermediate.AttentionKL(layer_map, cfg.attention_weight))
  if cfg.get('relation_weight', 0.0):
    terms.append(distill_intermediate.MiniLMRelations(
        cfg.get('relation_layer_map', 'last:1'), cfg.relation_weight,
        relation_heads=cfg.get('relation_heads', 0)))
  for term in terms[2:]:
    term.check(student_config, teacher_configs)
  return terms


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


def load_source(config) -> tuple[Any, Any, Any]:
  """(tokenizer, encoder config, encoder params or None) the run starts from.

  A pre-trained checkpoint (`config.model`) gives its encoder params; a saved run
  (`config.init_from`) gives its own architecture, and its params are restored later
  (`saved_runs.init_params`), head included when it fits. The run config's dtype and
  dropout apply either way.
  """
  overrides = dict(dtype=config.dtype, hidden_dropout=config.dropout,
                   attention_dropout=config.dropout)
  tokenizer, encoder_config, params = _source(config, overrides)
  if config.get('quant'):  # QAT: the products of the model fake-quantize their operands
    full = config.get('quant_full', False)  # fully quantized BERT: attention and hooks too
    rules = quantize.qat_rules(config.quant, config.get('quant_attention', False) or full)
    encoder_config = encoder_config.replace(products=rules + encoder_config.products)
    if full:
      encoder_config = encoder_config.replace(
          hooks=quantize.full_quant_rules(config.quant) + encoder_config.hooks)
  return tokenizer, encoder_config, params


def _source(config, overrides: dict) -> tuple[Any, Any, Any]:
  if config.get('init_from'):
    folder, which = saved_runs.parse_ref(config.init_from)
    model = saved_runs.read_model(folder)
    if model is None:
      raise FileNotFoundError(f'config.init_from={config.init_from!r}: {folder} has no '
                              f'{saved_runs.MODEL_FILE}, so its architecture is unknown')
    saved_runs.checkpoint_step(folder, which)  # fails now, naming the folder, if absent
    logging.info('Starting from run %s (%s checkpoint); config.model=%s is not read',
                 folder, which, config.model)
    tokenizer = saved_runs.run_tokenizer(folder)
    check_tokenizer_fits(tokenizer, model.encoder.vocab_size, folder)
    return tokenizer, model.encoder.replace(**overrides), None
  if config.get('scratch'):
    encoder_config, _ = read_config(resolve(config.model),
                                    **{**scratch_fields(config.scratch), **overrides})
    logging.info('From scratch: %s architecture with %s, random params', config.model,
                 config.scratch)
    return load_tokenizer(config.model), encoder_config, None
  encoder_config, params = load_pretrained(config.model, **overrides)
  return load_tokenizer(config.model), encoder_config, params


def scratch_fields(spec: str) -> dict[str, Any]:
  """'num_layers=4,hidden_size=256' -> {'num_layers': 4, 'hidden_size': 256}."""
  known = {f.name for f in dataclasses.fields(EncoderConfig)}
  fields = {}
  for item in filter(None, (part.strip() for part in spec.split(','))):
    key, sep, value = item.partition('=')
    if not sep or key.strip() not in known:
      raise ValueError(f'config.scratch={spec!r}: {item!r} is not <EncoderConfig field>=<value>'
                       f'; fields: {sorted(known)}')
    try:
      fields[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      fields[key.strip()] = value.strip()
  return fields


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


def config_differences(workdir: str, config) -> list[str]:
  """'field: saved -> now' for each leaf that differs from the workdir's config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    saved = json.load(f)
  now = json.loads(config.to_json_best_effort())

  def flat(tree, prefix=''):
    if not isinstance(tree, dict):
      return {prefix: tree}
    out = {}
    for key, value in tree.items():
      out.update(flat(value, f'{prefix}.{key}' if prefix else key))
    return out
  saved, now = flat(saved), flat(now)
  missing = object()
  return [f'{k}: {saved.get(k, "(absent)")!r} -> {now.get(k, "(absent)")!r}'
          for k in sorted(set(saved) | set(now))
          if saved.get(k, missing) != now.get(k, missing)]


def resume_mismatch(workdir: str, config, step: int | None, error: Exception) -> str:
  """Why the workdir's latest checkpoint cannot resume under `config`, for the user."""
  changed = config_differences(workdir, config)
  detail = str(error).strip().split('\n')
  return (f'{workdir} holds a checkpoint (step {step}) whose train state does not fit this '
          'config, so it cannot be resumed: '
          + ('the config differs from the one the run was started with (config.json) in '
             + '; '.join(changed[:12]) + (' ...' if len(changed) > 12 else '')
             if changed else 'the saved state has other arrays or shapes')
          + f'. Resume with the original config, or give a new --workdir (the checkpoints in '
          f'{workdir} are untouched). Orbax said: {" ".join(detail[:6])[:600]}')


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """Fine-tunes `config.model` (or `config.init_from`) on `config.task`; returns metrics."""
  check_config(config)
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  spec = tasks.get_task(config.task)
  if jax.process_index() == 0:
    save_config(config, workdir)
  tokenizer, encoder_config, encoder_params = load_source(config)
  if config.max_length > encoder_config.max_length:
    raise ValueError(f'config.max_length={config.max_length} exceeds the position table of '
                     f'the model ({encoder_config.max_length} positions)')

  # -- Data ------------------------------------------------------------------------
  accumulate = config.optimizer.get('accumulate_steps', 1)
  train_iter = None
  if uses_corpus(config):  # pre-training: a text corpus replaces the task's splits
    spec, train_examples, eval_examples, eval_features, train_iter = load_corpus(
        config, tokenizer, encoder_config.vocab_size, config.batch_size * accumulate)
    train_features = train_examples
  else:
    train_examples, train_features = load_split(config, spec, tokenizer, config.train_split,
                                                config.train_examples, training=True)
    eval_examples, eval_features = load_split(config, spec, tokenizer, config.eval_split,
                                              config.eval_examples)
  model = build_model(config, spec, encoder_config)
  model = model.clone(objective=model.objective.with_train_statistics(train_features))
  objective = model.objective
  if jax.process_index() == 0:  # the run folder holds its architecture and tokenizer
    saved_runs.write_model(workdir, model)
    saved_runs.save_tokenizer(workdir, tokenizer)
  # One batch per optimizer update: accumulate_steps micro-batches of batch_size.
  if train_iter is None:
    train_iter = BatchIterator(
        train_features, config.batch_size * accumulate, max_length=config.max_length,
        pad_multiple=config.pad_multiple, shuffle=True, seed=config.seed,
        bucket_batches=config.bucket_batches, drop_remainder=True, num_epochs=None,
        process_index=jax.process_index(), process_count=jax.process_count(),
        pad_id=tokenizer.pad_token_id or 0)
  steps_per_epoch = len(train_iter)
  distill_config = config.get('distill')
  distilling = bool(distill_config and distill_config.teachers)
  in_step = distilling and distill_config.get('mode', 'cached') == 'in_step'
  # [train features, ...] soft targets, looked up by each batch's feature indices.
  targets = (teachers_lib.soft_targets(config, spec, objective, tokenizer, train_features,
                                       workdir) if distilling and not in_step else None)
  teacher_models, teacher_params = (
      teachers_lib.in_step_teachers(config, spec, objective, tokenizer) if in_step else ((), ()))
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  logging.info('%s: %d train / %d eval examples, %d updates (%d per epoch) of %d x %d',
               spec.name, len(train_examples), len(eval_examples), total_steps,
               steps_per_epoch, accumulate, config.batch_size)

  # -- Model -----------------------------------------------------------------------
  rng = jax.random.PRNGKey(config.seed)
  dummy = jnp.zeros((1, 8), jnp.int32)
  init = functools.partial(model.init, input_ids=dummy, attention_mask=jnp.ones_like(dummy))
  boxed = jax.eval_shape(init, rng)['params']

  # -- Mesh and shardings -------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  shardings = sharding.param_shardings(boxed, mesh)
  # From a checkpoint only the head and mix are initialised: dropping the encoder from
  # the jitted init's outputs lets XLA skip its random init (no second copy of a large
  # model). From a run everything is initialised (abstractly) and then restored; from
  # scratch everything is initialised for real. Both leave encoder_params None.
  keep = lambda name: encoder_params is None or name != 'encoder'
  with mesh:
    params = jax.jit(lambda r: {k: v for k, v in nn.meta.unbox(init(r)['params']).items()
                                if keep(k)},
                     out_shardings={k: v for k, v in shardings.items() if keep(k)})(rng)
  params = dict(params)
  if config.get('init_from'):
    params, fresh = saved_runs.init_params(config.init_from, model, params)
    if fresh:
      logging.info('Not in %s (other task or labels), initialised fresh: %s',
                   config.init_from, fresh)
    params = jax.device_put(params, shardings)
  elif encoder_params is not None:  # None: from scratch, initialised above
    params['encoder'] = jax.device_put(encoder_params, shardings['encoder'])

  # -- Optimizer (freezing by optax partition: frozen params hold no state) ---------
  opt_config = {k: v for k, v in config.optimizer.to_dict().items() if k != 'accumulate_steps'}
  opt_config.update(total_steps=total_steps, num_layers=encoder_config.num_layers,
                    attention_map=encoder_config.attention_map, ffn_map=encoder_config.ffn_map)
  rules = freeze.preset(config.freeze)
  inner = make_optimizer(opt_config)
  if config.get('sparsity') and config.sparsity.target:  # gradual pruning, masks in opt state
    if config.ema_decay:
      raise ValueError('config.sparsity.target > 0 needs config.ema_decay = 0: the average '
                       'of the params is not sparse')
    # Inside the freezing partition: frozen params are never pruned.
    inner = sparsity.from_config(config.sparsity, inner, total_steps)
  tx = freeze.with_freezing(inner, params, rules)
  schedule = schedule_from_config(opt_config)
  trainable, total = freeze.count_trainable(params, rules)
  labels = freeze.freeze_labels(params, rules)
  state = init_state(params, tx, config.seed + 1, config.ema_decay)
  # Pin every leaf to a sharding on the mesh and make the step return the same ones:
  # otherwise step 2 sees differently placed inputs than step 1 and compiles again.
  state_shardings = jax.tree.map(lambda x: sharding.on_mesh(x, mesh), state)
  state = jax.device_put(state, state_shardings)
  teacher_params = jax.device_put(teacher_params, sharding.replicated(mesh))

  # -- Loss terms: intermediate terms may own params (aux), trained and resumed too --
  terms = loss_terms(config, objective, encoder_config,
                     [t.encoder for t in teacher_models], in_step)
  aux = init_aux(terms, jax.random.fold_in(rng, 1), encoder_config,
                 [t.encoder for t in teacher_models])
  aux_tx = None
  if aux:  # the same optimizer settings, without LLRD or gradual unfreezing (no layers)
    aux_tx = make_optimizer({**opt_config, 'llrd': None, 'unfreeze_every': None})
    state = add_aux(state, aux, aux_tx)
    state_shardings = jax.tree.map(lambda x: sharding.on_mesh(x, mesh), state)
    state = jax.device_put(state, state_shardings)

  # -- Resume: the workdir's latest checkpoint wins ---------------------------------
  ckpt = Checkpoints(workdir, keep=config.keep_checkpoints)
  best = {'score': -math.inf, 'step': -1}
  if ckpt.latest_step() is not None:
    try:
      state, data_state = ckpt.restore(abstract_like(state))
    except ValueError as e:  # orbax: the saved tree or shapes differ from this config's
      raise ValueError(resume_mismatch(workdir, config, ckpt.latest_step(), e)) from e
    train_iter.load_state_dict(data_state['iterator'])
    best = data_state['best']
    logging.info('Resumed from step %d in %s', int(state['step']), workdir)

  # -- Steps --------------------------------------------------------------------------
  train_step = jax.jit(
      make_train_step(model, tx, terms, teachers=teacher_models, labels=labels,
                      schedule=schedule, ema_decay=config.ema_decay,
                      accumulate_steps=accumulate, aux_tx=aux_tx),
      donate_argnums=0, out_shardings=(state_shardings, None))

  def eval_params(state):
    return averaging.as_params(state['ema'], state['params']) if config.ema_decay else state['params']

  predict = evaluation.predict_fn(model)

  def run_eval(params) -> dict[str, float]:
    return evaluation.evaluate(model, params, spec, eval_examples, eval_features,
                               batch_size=config.eval_batch_size, max_length=config.max_length,
                               pad_multiple=config.pad_multiple, predict=predict,
                               put=lambda b: sharding.put_batch(b, mesh))

  # -- Loop ---------------------------------------------------------------------------
  writer = MetricWriter(workdir)
  eval_every = config.eval_every or steps_per_epoch
  checkpoint_every = config.checkpoint_every or eval_every
  start = int(state['step'])
  progress = _Progress(start, total_steps)
  pending = _Pending()
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
        state, metrics = train_step(state, sharding.put_batch(batch, mesh), teacher_params)
      pending.add(step, metrics['loss'])
      seen += int(batch['weights'].sum())
      log = step % config.log_every == 0 or step == total_steps
      evaluate = step % eval_every == 0 or step == total_steps
      save = step % checkpoint_every == 0 or step == total_steps
      if log or evaluate or save:  # nothing non-finite is logged, evaluated or saved
        pending.check(ckpt.latest_step(), workdir)
      if log:
        values = {k: float(v) for k, v in metrics.items()}
        values['examples_per_sec'] = seen / (time.perf_counter() - t0)
        writer.write(step, 'train', values)
        progress.update(step, values)
        seen, t0 = 0, time.perf_counter()
      if evaluate:
        with mesh:
          last_eval = run_eval(eval_params(state))
        writer.write(step, 'eval', last_eval)
        progress.message(f'step {step}: ' + ', '.join(f'{k} {v:.2f}' for k, v in last_eval.items()))
        score = last_eval[spec.main_metric]
        if score > best['score']:
          best = {'score': score, 'step': step}
          ckpt.save_best(step, eval_params(state), score, {'metrics': last_eval, 'step': step})
      if save:
        ckpt.save(step, state, {'iterator': train_iter.state_dict(), 'best': best})
    if start >= total_steps:  # a finished run started again: report its final metrics
      with mesh:
        last_eval = run_eval(eval_params(state))
  finally:
    ckpt.close()
    writer.close()
    progress.close()
  return {'final': last_eval, 'best': best, 'steps': total_steps, 'trainable_params': trainable,
          'total_params': total, 'workdir': workdir, 'params': eval_params(state),
          'model': model, 'task': spec.name, 'main_metric': spec.main_metric}


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
