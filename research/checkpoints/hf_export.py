"""Exporting our params back to a Hugging Face checkpoint folder.

    export_pretrained(config, params, 'out/', tokenizer_from='minilm-l6')
    transformers.AutoModel.from_pretrained('out/')   # loads without warnings

The tensor names come from the same table as loading (`hf_names.tensor_map`), so a
load -> export -> load round trip is exact.
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
  out = {}
  for entry in table:
    if entry.ours not in flat:
      raise ValueError(f'Params lack {entry.ours} (needed for {entry.hf})')
    array = np.asarray(flat[entry.ours], dtype=np.float32)
    out[entry.hf] = np.ascontiguousarray(hf_names.to_hf(entry.kind, array))
  return out


def export_pretrained(config: EncoderConfig, params: Mapping[str, Any],
                      folder: str | os.PathLike, tokenizer_from: str | None = None) -> Path:
  """Writes config.json and model.safetensors (and tokenizer files) to `folder`.

  Args:
    config: the encoder's config.
    params: the encoder's params (the tree under 'encoder' for a task model).
    folder: output folder, created if needed.
    tokenizer_from: a model name or folder whose tokenizer files are copied.

  Returns:
    The folder path.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  folder = Path(folder)
  hf_config = hf_names.config_to_hf(config)
  tensors = to_hf_tensors(config, params)
  folder.mkdir(parents=True, exist_ok=True)
  # Write to temporary names first so an interrupted export never leaves a folder
  # whose config and weights disagree.
  tmp_weights, tmp_config = folder / 'model.safetensors.tmp', folder / 'config.json.tmp'
  save_file(tensors, str(tmp_weights), metadata={'format': 'pt'})
  tmp_config.write_text(json.dumps(hf_config, indent=2, sort_keys=True))
  os.replace(tmp_weights, folder / 'model.safetensors')
  os.replace(tmp_config, folder / 'config.json')
  if tokenizer_from is not None:
    source = hub.resolve(tokenizer_from)
    for name in _TOKENIZER_FILES:
      if (source / name).is_file():
        shutil.copyfile(source / name, folder / name)
  return folder
