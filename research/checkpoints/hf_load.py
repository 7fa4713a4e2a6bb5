"""Strict loading of Hugging Face checkpoint folders into our params tree.

    config, params = load_pretrained('minilm-l6')
    tokenizer = load_tokenizer('minilm-l6')

Every parameter of our tree must come from the checkpoint and every checkpoint tensor
must be used, with matching shapes; otherwise a `CheckpointError` lists what is
missing, unexpected or mis-shaped. `dont_load` (regexes over our paths) keeps chosen
parameters at their fresh initialisation; `ignore` (regexes over HF names) skips
tensors that are not part of the encoder (pre-training and task heads by default).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax
import jax
import numpy as np

from research.checkpoints import hf_names, hub
from research.models.config import EncoderConfig

Params = Mapping[str, Any]


class CheckpointError(ValueError):
  """A checkpoint does not match the model it is loaded into."""


def read_tensors(folder: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint folder as numpy arrays, safetensors preferred."""
  folder = Path(folder)
  single = folder / 'model.safetensors'
  index = folder / 'model.safetensors.index.json'
  binary = folder / 'pytorch_model.bin'
  if single.is_file() or index.is_file():
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    files = [single] if single.is_file() else sorted(
        {folder / f for f in json.loads(index.read_text())['weight_map'].values()})
    tensors = {}
    for f in files:
      try:
        tensors.update(load_file(str(f)))
      except Exception as e:
        raise CheckpointError(f'Cannot read {f}: {type(e).__name__}: {e}') from e
    return tensors
  if binary.is_file():
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise CheckpointError(
          f'{folder} holds only pytorch_model.bin, which needs torch to read: install '
          'torch (CPU build is enough) or convert the checkpoint to model.safetensors') from e
    state = torch.load(binary, map_location='cpu', weights_only=True)
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in state.items()}
  raise CheckpointError(f'{folder} has no model.safetensors, safetensors index or '
                        'pytorch_model.bin')


def _normalise_names(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
  """Strips the task-model prefix ('bert.', ...) and renames old gamma/beta names."""
  prefix = hf_names.BASE_PREFIX[model_type]
  out = {}
  for name, value in tensors.items():
    if name.startswith(prefix):
      name = name[len(prefix):]
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', name)
    name = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)
    out[name] = value
  return out


def _has_pooler(tensors: Mapping[str, np.ndarray]) -> bool:
  return any(name.startswith('pooler.') for name in tensors)


def read_config(folder: str | os.PathLike, **overrides: Any) -> tuple[EncoderConfig, dict]:
  """Our config and the raw HF config dict of a checkpoint folder."""
  path = Path(folder) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{folder} has no config.json: not a Hugging Face checkpoint folder')
  try:
    hf = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f'{path} is not valid JSON: {e}') from e
  return hf_names.config_from_hf(hf, **overrides), hf


def convert(config: EncoderConfig, tensors: Mapping[str, np.ndarray],
            init_params: Params | None = None, dont_load: Sequence[str] = (),
            ignore: Sequence[str] = hf_names.DEFAULT_IGNORE) -> dict:
  """Builds our params tree from HF tensors, strictly.

  Args:
    config: the encoder config the params are for.
    tensors: HF tensor name -> array (prefix already stripped).
    init_params: a freshly initialised tree; supplies the expected shapes and the
      values of parameters matched by `dont_load`.
    dont_load: regexes (re.fullmatch) over our paths that are not loaded.
    ignore: regexes (re.fullmatch) over HF names of tensors to skip.

  Returns:
    A nested dict of numpy arrays in our layout and `config.param_dtype`.
  """
  if init_params is None:
    from research.models.encoder import Encoder  # pylint: disable=g-import-not-at-top
    shapes = jax.eval_shape(lambda: flax.linen.meta.unbox(Encoder(config).init(
        jax.random.PRNGKey(0), np.zeros((1, 2), np.int32))['params']))
    init_flat = None
  else:
    shapes = init_params
    init_flat = flax.traverse_util.flatten_dict(init_params, sep='/')
  expected = {k: tuple(v.shape) for k, v in
              flax.traverse_util.flatten_dict(shapes, sep='/').items()}
  skip = lambda path: any(re.fullmatch(p, path) for p in dont_load)

  flat, missing, misshaped, used = {}, [], [], set()
  for entry in hf_names.tensor_map(config):
    if entry.ours not in expected:
      raise CheckpointError(f'Internal name table lists {entry.ours}, absent from the model')
    if skip(entry.ours):
      if init_flat is None:
        raise CheckpointError('dont_load needs init_params to fill the skipped parameters')
      flat[entry.ours] = np.asarray(init_flat[entry.ours])
      used.add(entry.hf)
      continue
    if entry.hf not in tensors:
      missing.append(f'{entry.hf} (-> {entry.ours})')
      continue
    used.add(entry.hf)
    want = hf_names.hf_shape(entry.kind, expected[entry.ours])
    got = tuple(tensors[entry.hf].shape)
    if got != want:
      misshaped.append(f'{entry.hf}: checkpoint {got}, model expects {want}')
      continue
    flat[entry.ours] = hf_names.to_ours(entry.kind, np.asarray(tensors[entry.hf]),
                                        expected[entry.ours]).astype(config.params_dtype)
  unused = sorted(set(tensors) - used)
  ignored = [n for n in unused if any(re.fullmatch(p, n) for p in ignore)]
  unexpected = [n for n in unused if n not in ignored]
  not_in_table = sorted(set(expected) - set(flat))
  problems = []
  if missing:
    problems.append(f'missing tensors: {missing}')
  if misshaped:
    problems.append(f'mis-shaped tensors: {misshaped}')
  if unexpected:
    problems.append(f'unexpected tensors: {unexpected}')
  if not_in_table and not missing and not misshaped:
    problems.append(f'parameters with no checkpoint source: {not_in_table}')
  if problems:
    raise CheckpointError(f'Checkpoint does not match the {config.model_type} model: '
                          + '; '.join(problems)
                          + '. Use dont_load=[regex] to keep chosen parameters at init.')
  weights = [n for n in ignored if not any(re.fullmatch(p, n) for p in hf_names.BUFFERS)]
  if weights:  # a head the encoder does not hold: say so, as transformers does
    logging.warning('Loading the %s encoder, %d checkpoint tensor(s) that are not part of '
                    'it were not used: %s%s', config.model_type, len(weights), weights[:8],
                    ' ...' if len(weights) > 8 else '')
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def resolve_output_table(config: EncoderConfig, tensors: dict, where) -> tuple[EncoderConfig,
                                                                                 dict]:
  """GPT-2's LM head as the checkpoint holds it: a stored `lm_head.weight` equal to the
  word embeddings is the tied copy (dropped); one that differs while the config says
  tied is kept, untied, with a warning (what transformers does)."""
  if config.model_type != 'gpt2' or 'lm_head.weight' not in tensors:
    return config, tensors
  if not config.tie_word_embeddings:
    return config, tensors
  if np.array_equal(tensors['lm_head.weight'], tensors.get('wte.weight')):
    return config, {k: v for k, v in tensors.items() if k != 'lm_head.weight'}
  logging.warning('%s: config.json ties the LM head to the word embeddings '
                  '(tie_word_embeddings true), but lm_head.weight differs from wte.weight; '
                  'keeping both, untied, as transformers does. Set tie_word_embeddings to '
                  'false in config.json to say so and silence this.', where)
  return config.replace(tie_word_embeddings=False), tensors


def load_pretrained(name: str | os.PathLike, *, dont_load: Sequence[str] = (),
                    ignore: Sequence[str] = hf_names.DEFAULT_IGNORE, rng=None,
                    **config_overrides: Any) -> tuple[EncoderConfig, dict]:
  """Loads a pre-trained encoder.

  Args:
    name: 'minilm-l6' (bundled, offline), a checkpoint folder, or a Hub id.
    dont_load: regexes over our param paths to keep at random init (needs `rng`).
    ignore: regexes over HF tensor names that are not part of the encoder.
    rng: PRNG key for the parameters named by `dont_load`.
    **config_overrides: EncoderConfig fields to change (dtype, dropout, ...).

  Returns:
    `(config, params)` with params a nested dict of numpy arrays.
  """
  folder = hub.resolve(name)
  config, hf = read_config(folder, **config_overrides)
  tensors = _normalise_names(read_tensors(folder), hf['model_type'])
  config, tensors = resolve_output_table(config, tensors, folder)
  if 'use_pooler' not in config_overrides:
    config = config.replace(use_pooler=_has_pooler(tensors))
  init_params = None
  if dont_load:
    from research.models.encoder import init_params as init  # pylint: disable=g-import-not-at-top
    init_params = jax.tree.map(np.asarray, init(config, rng if rng is not None
                                                 else jax.random.PRNGKey(0)))
  return config, convert(config, tensors, init_params, dont_load, ignore)


# Files a slow tokenizer of each family is built from when there is no tokenizer.json.
_VOCAB_FILES = {'bert': ('vocab.txt',), 'distilbert': ('vocab.txt',),
                'roberta': ('vocab.json', 'merges.txt'), 'albert': ('spiece.model',),
                'gpt2': ('vocab.json', 'merges.txt')}


def check_tokenizer_fits(tokenizer, vocab_size: int, where: str | os.PathLike) -> None:
  """Raises CheckpointError when `tokenizer` cannot be the tokenizer of a model whose
  embedding table has `vocab_size` rows.

  More tokens than rows would index past the table. Far fewer means another vocabulary
  (or a tokenizer built without its vocabulary file). Tables padded beyond the
  tokenizer, as many checkpoints pad them to a multiple of 8 or 64, are normal: up to
  max(128, 1 %) spare rows pass.
  """
  n = len(tokenizer)
  if n > vocab_size:
    raise CheckpointError(
        f'The tokenizer of {where} has {n} tokens but the model\'s embedding table has '
        f'{vocab_size} rows: ids >= {vocab_size} would index past it. Use the tokenizer '
        'the checkpoint was trained with')
  if n < vocab_size - max(128, vocab_size // 100):
    raise CheckpointError(
        f'The tokenizer of {where} has {n} tokens for a model with {vocab_size} embedding '
        'rows: it is not this model\'s tokenizer (a missing or mismatched vocabulary '
        'file?). Put the checkpoint\'s own tokenizer files (tokenizer.json, or the '
        'vocabulary its config.json implies) in the folder')


def load_tokenizer(name: str | os.PathLike):
  """The fast tokenizer stored beside the checkpoint `name`, checked against the model.

  Raises:
    CheckpointError: the folder's tokenizer files cannot build the tokenizer its
      config.json names, or the tokenizer does not fit the model's embedding table.
  """
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  folder = hub.resolve(name)
  hf = json.loads((folder / 'config.json').read_text())
  model_type = hf.get('model_type')
  needed = _VOCAB_FILES.get(model_type, ())
  if not (folder / 'tokenizer.json').is_file() and needed and not all(
      (folder / f).is_file() for f in needed):
    present = sorted(p.name for p in folder.iterdir() if p.is_file())
    raise CheckpointError(
        f'{folder} has no tokenizer.json and lacks {[f for f in needed if not (folder / f).is_file()]}'
        f', which a {model_type} tokenizer is built from (files there: {present}); '
        'add the checkpoint\'s tokenizer files')
  try:
    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
  except Exception as e:  # transformers raises many types for unreadable tokenizer files
    if not model_type and not (folder / 'tokenizer.json').is_file():
      # transformers then blames a missing sentencepiece / tiktoken; the cause is that it
      # cannot tell which tokenizer the vocabulary files are for.
      raise CheckpointError(
          f'Cannot build the tokenizer of {folder}: its config.json has no model_type, so '
          'transformers cannot tell which tokenizer class its vocabulary files '
          f'({sorted(p.name for p in folder.iterdir() if p.is_file())}) are for. Add '
          'model_type (e.g. "bert" for a vocab.txt) to config.json, or a tokenizer.json') from e
    raise CheckpointError(f'Cannot build the tokenizer of {folder}: {type(e).__name__}: {e}') from e
  if not tokenizer.is_fast:
    raise ValueError(f'{folder} has no fast tokenizer (tokenizer.json)')
  vocab_size = hf.get('vocab_size')
  if vocab_size:
    check_tokenizer_fits(tokenizer, int(vocab_size), folder)
  return tokenizer


def load_tokenizer_folder(source: str | os.PathLike):
  """The fast tokenizer of a tokenizer folder (a run's tokenizer/, no config.json) or of
  a checkpoint name / folder (`load_tokenizer`)."""
  if os.path.isdir(source) and not (Path(source) / 'config.json').is_file():
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    return AutoTokenizer.from_pretrained(str(source), use_fast=True)
  return load_tokenizer(source)
