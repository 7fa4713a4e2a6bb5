"""Where a run starts: a pre-trained checkpoint, a saved run, or random params.

    source = load_source(config, on)      # tokenizer, encoder config, encoder params
    params = initial_params(config, model, source, mesh, shardings, new=regex)

`config.model` names a checkpoint (alias, folder or Hub id) whose encoder params are
loaded; `config.init_from` a saved run whose own architecture is rebuilt and whose
params (head included when it fits) are restored; `config.scratch` changes fields of
`config.model`'s architecture and initialises everything at random; `config.student`
cuts a student from either source's encoder (its layers, a narrower width:
`student.py`), whose params are then loaded like a checkpoint's. The run config's
dtype and dropout apply either way, then each active technique's encoder rules (QAT's
products, LoRA's projections).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from research import specs
from research.checkpoints import load_pretrained, load_tokenizer, resolve
from research.checkpoints.hf_load import check_tokenizer_fits, read_config
from research.models.config import EncoderConfig
from research.train import saved_runs, sharding, techniques
from research.train import student as student_lib


class Source(NamedTuple):
  """The tokenizer, encoder config and (from a checkpoint) encoder params a run starts from."""
  tokenizer: Any
  encoder: EncoderConfig
  encoder_params: Any  # None: from a saved run (restored later) or from scratch


def load_source(config, on=()) -> Source:
  """The run's starting point (see the module docstring); `on`: the active techniques."""
  overrides = dict(dtype=config.dtype, hidden_dropout=config.dropout,
                   attention_dropout=config.dropout)
  if config.init_from:
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
    source = Source(tokenizer, model.encoder.replace(**overrides), None)
    if config.student:  # cut from the run's encoder, then loaded like a checkpoint's
      params, _ = saved_runs.restore_params(folder, which)
      encoder, params = student_lib.cut(config.student, source.encoder,
                                        saved_runs.with_empty_arrays(params, model)['encoder'],
                                        f'the run {folder}')
      source = source._replace(encoder=encoder, encoder_params=params)
  elif config.scratch:
    encoder, _ = read_config(resolve(config.model),
                             **{**scratch_fields(config.scratch), **overrides})
    logging.info('From scratch: %s architecture with %s, random params', config.model,
                 config.scratch)
    source = Source(load_tokenizer(config.model), encoder, None)
  else:
    encoder, params = load_pretrained(config.model, **overrides)
    if config.student:
      encoder, params = student_lib.cut(config.student, encoder, params,
                                        f'config.model={config.model!r}')
    source = Source(load_tokenizer(config.model), encoder, params)
  return source._replace(encoder=techniques.encoder(list(on), config, source.encoder))


def scratch_fields(spec: str) -> dict[str, Any]:
  """'num_layers=4,hidden_size=256' -> {'num_layers': 4, 'hidden_size': 256}."""
  known = {f.name for f in dataclasses.fields(EncoderConfig)}
  return specs.fields(spec, known=known, what='config.scratch')


def initial_params(config, model, source: Source, mesh, shardings, new: str | None = None):
  """The run's params on the mesh: the checkpoint's encoder (or the saved run's params,
  or random ones) with a fresh head; params matching `new` (a technique's additions,
  e.g. LoRA factors) are always initialised fresh."""
  dummy = jnp.zeros((1, 8), jnp.int32)
  init = functools.partial(model.init, input_ids=dummy, attention_mask=jnp.ones_like(dummy))
  rng = jax.random.PRNGKey(config.seed)
  new_re = re.compile(new) if new else None

  def keep(path: str) -> bool:
    # From a checkpoint only the head, mix and new params are initialised: dropping the
    # rest of the encoder from the jitted init's outputs lets XLA skip its random init
    # (no second copy of a large model). From a run or from scratch everything is.
    return (source.encoder_params is None or not path.startswith('encoder/')
            or bool(new_re and new_re.fullmatch(path)))

  def fresh(r):
    flat = flax.traverse_util.flatten_dict(nn.meta.unbox(init(r)['params']), sep='/')
    return {k: v for k, v in flat.items() if keep(k)}

  flat_shardings = flax.traverse_util.flatten_dict(shardings, sep='/')
  with mesh:
    made = jax.jit(fresh, out_shardings={k: flat_shardings[k] for k in
                                         jax.eval_shape(fresh, rng)})(rng)
  params = flax.traverse_util.unflatten_dict(made, sep='/')
  if config.init_from and source.encoder_params is None:  # a student cut from it has them
    params, fresh_parts = saved_runs.init_params(config.init_from, model, params, new=new)
    if fresh_parts:
      logging.info('Not in %s (other task or labels), initialised fresh: %s',
                   config.init_from, fresh_parts)
    return sharding.put(params, shardings)
  if source.encoder_params is not None:
    loaded = flax.traverse_util.flatten_dict(source.encoder_params, sep='/')
    ours = flax.traverse_util.flatten_dict(params.get('encoder', {}), sep='/')
    expected = {k[len('encoder/'):] for k in flat_shardings if k.startswith('encoder/')}
    if set(loaded) | set(ours) != expected:
      raise ValueError(f'{config.model}: the encoder params do not fit the model built for '
                       f'this run; missing {sorted(expected - set(loaded) - set(ours))[:5]}, '
                       f'unexpected {sorted(set(loaded) | set(ours) - expected)[:5]}')
    params['encoder'] = sharding.put(
        flax.traverse_util.unflatten_dict({**loaded, **ours}, sep='/'), shardings['encoder'])
  return params
