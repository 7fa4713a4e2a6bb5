"""Exporting our params back to a Hugging Face checkpoint folder.

    export_pretrained(config, params, 'out/', tokenizer_from='minilm-l6')
    transformers.AutoModel.from_pretrained('out/')   # loads without warnings

The tensor names come from the same table as loading (`hf_names.tensor_map`), so a
load -> export -> load round trip is exact.

Structurally pruned models (fewer heads, narrower or per-layer FFNs) are padded back
to full size with zeros by `pad_pruned`: a zero head (Q, K, V and its output rows) and
a zero FFN unit contribute exactly nothing, so the padded model computes the same
outputs in any transformers version (transformers 5 dropped `pruned_heads`), only
without the speed-up. `pad=False` writes `pruned_heads` instead (read by
transformers < 5) and refuses per-layer FFN widths, which no HF config can express.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import flax
import numpy as np

from research.checkpoints import hf_names, hub
from research.models.config import EncoderConfig

_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                    'vocab.txt', 'vocab.json', 'merges.txt', 'spiece.model')


def to_hf_tensors(config: EncoderConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our params as HF-named float32 numpy tensors (no base-model prefix)."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  table = hf_names.tensor_map(config)
  names = {e.ours for e in table}
  extra = sorted(set(flat) - names)
  if extra:
    raise ValueError(f'Params have entries with no Hugging Face name: {extra}')
  out, fused = {}, {}
  for entry in table:
    if entry.ours not in flat:
      raise ValueError(f'Params lack {entry.ours} (needed for {entry.hf})')
    array = np.asarray(flat[entry.ours], dtype=np.float32)
    if entry.kind in hf_names.FUSED_PART or entry.kind in hf_names.FUSED_BIAS_PART:
      # GPT-2's c_attn: three of our params are one HF tensor, columns [q | k | v].
      part = hf_names.FUSED_PART.get(entry.kind, hf_names.FUSED_BIAS_PART.get(entry.kind))
      fused.setdefault(entry.hf, {})[part] = hf_names.to_hf(entry.kind, array)
      continue
    out[entry.hf] = np.ascontiguousarray(hf_names.to_hf(entry.kind, array))
  for name, parts in fused.items():
    out[name] = np.ascontiguousarray(np.concatenate([parts[i] for i in range(3)], axis=-1))
  return out


def pad_pruned(config: EncoderConfig, params: Mapping[str, Any]
               ) -> tuple[EncoderConfig, dict]:
  """(config, params) with every layer at full heads and the widest FFN, zeros added.

  The padded model's outputs equal the pruned model's: padded heads have zero query,
  key, value and output weights (their context is zero), and padded FFN units zero
  weights and bias (GELU/ReLU of 0 is 0).
  """
  full_heads = config.hidden_size // config.head_dim
  width = max(config.ffn(i) for i in range(config.num_layers))
  if all(config.heads(i) == full_heads and config.ffn(i) == width
         for i in range(config.num_layers)):
    return config, dict(params)
  if config.attention_map is not None or config.ffn_map is not None:
    raise ValueError('Padding pruned layers of a model with shared layers is not supported')
  pad = lambda x, axis, size: np.pad(np.asarray(x), [(0, size - np.shape(x)[a]) if a == axis
                                                      else (0, 0) for a in range(np.ndim(x))])
  out = flax.traverse_util.flatten_dict(params, sep='/')
  for i in range(config.num_layers):
    prefix = f'layer_{i}'
    for name in ('query', 'key', 'value'):
      out[f'{prefix}/attention/{name}/kernel'] = pad(out[f'{prefix}/attention/{name}/kernel'],
                                                     1, full_heads)
      out[f'{prefix}/attention/{name}/bias'] = pad(out[f'{prefix}/attention/{name}/bias'],
                                                   0, full_heads)
    out[f'{prefix}/attention/out/kernel'] = pad(out[f'{prefix}/attention/out/kernel'], 0,
                                                full_heads)
    if config.ffn(i) == 0:
      bias = out.pop(f'{prefix}/mlp/output_bias')
      out[f'{prefix}/mlp/intermediate/kernel'] = np.zeros((config.hidden_size, width), np.float32)
      out[f'{prefix}/mlp/intermediate/bias'] = np.zeros((width,), np.float32)
      out[f'{prefix}/mlp/output/kernel'] = np.zeros((width, config.hidden_size), np.float32)
      out[f'{prefix}/mlp/output/bias'] = bias
    else:
      for name, axis in (('intermediate/kernel', 1), ('intermediate/bias', 0),
                         ('output/kernel', 0)):
        out[f'{prefix}/mlp/{name}'] = pad(out[f'{prefix}/mlp/{name}'], axis, width)
  return (config.replace(num_heads=full_heads, intermediate_size=width),
          flax.traverse_util.unflatten_dict(out, sep='/'))


def export_pretrained(config: EncoderConfig, params: Mapping[str, Any],
                      folder: str | os.PathLike, tokenizer_from: str | None = None,
                      pad: bool = True) -> Path:
  """Writes config.json and model.safetensors (and tokenizer files) to `folder`.

  Args:
    config: the encoder's config.
    params: the encoder's params (the tree under 'encoder' for a task model).
    folder: output folder, created if needed.
    tokenizer_from: a model name or folder whose tokenizer files are copied.
    pad: write pruned layers padded to full size with zeros (see `pad_pruned`).

  Returns:
    The folder path.
  """
  if pad:
    config, params = pad_pruned(config, params)
  return write_folder(folder, to_hf_tensors(config, params), hf_names.config_to_hf(config),
                      tokenizer_from)


def write_folder(folder: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                 hf_config: Mapping[str, Any], tokenizer_from: str | None = None) -> Path:
  """Writes model.safetensors, config.json and (copied) tokenizer files to `folder`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  # Write to temporary names first so an interrupted export never leaves a folder
  # whose config and weights disagree.
  tmp_weights, tmp_config = folder / 'model.safetensors.tmp', folder / 'config.json.tmp'
  save_file(tensors, str(tmp_weights), metadata={'format': 'pt'})
  tmp_config.write_text(json.dumps(hf_config, indent=2, sort_keys=True))
  os.replace(tmp_weights, folder / 'model.safetensors')
  os.replace(tmp_config, folder / 'config.json')
  if tokenizer_from is not None:  # a tokenizer folder, or a model name / checkpoint folder
    source = (Path(tokenizer_from) if os.path.isdir(tokenizer_from)
              else hub.resolve(tokenizer_from))
    for name in _TOKENIZER_FILES:
      if (source / name).is_file():
        shutil.copyfile(source / name, folder / name)
  return folder
