"""Shared fixtures: tiny Hugging Face checkpoints made on the fly, paths to real data."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
# Compilation dominates the trainer tests on 2 cores; a per-session persistent cache
# (inherited by the subprocess runs) lets identical steps compile once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='jax_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# Tokenized corpora are cached per session too, never in the user's ~/.cache.
os.environ.setdefault('RESEARCH_CACHE_DIR', tempfile.mkdtemp(prefix='research_cache_'))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'

# End-to-end tests that `make test-fast` leaves out (each took > ~8 s on 2 cores, or runs
# whole notebooks, studies, pipelines or trainer subprocesses); `make test` runs all.
SLOW = (
    'tests/notebooks/', 'tests/runs/', 'tests/train/test_runs.py',
    'tests/train/test_pretrain_run.py', 'tests/train/test_accuracy_parity.py',
    'tests/train/test_kill_anywhere.py', 'tests/train/test_multihost.py::test_two',
    'tests/train/test_multihost.py::test_a_killed', 'tests/train/test_multihost.py::test_the_cli',
    'tests/train/test_multihost.py::test_without_a_launcher',
    'tests/train/test_trainer.py::test_a_qat_run', 'tests/train/test_trainer.py::test_kills',
    'tests/train/test_trainer.py::test_sigkill', 'tests/train/test_trainer.py::test_eight',
    'tests/train/test_trainer.py::test_distillation', 'tests/train/test_techniques.py::test_lora',
    'tests/transforms/test_distill.py::test_intermediate_distillation_in_the_trainer',
    'tests/transforms/test_sparsity.py::test_trainer_run',
    'tests/transforms/test_quantize.py::test_fully_quantized',
    'tests/evaluate/test_pretrain_speed.py', 'tests/evaluate/test_fsdp_memory.py',
    'tests/objectives/test_pretraining.py::test_logits_at_predicted',
    'tests/train/test_general_distill.py::test_general_distillation_lowers',
    'tests/train/test_general_distill.py::test_the_student_seeds',
)


def pytest_collection_modifyitems(config, items):
  del config
  root = Path(__file__).resolve().parents[1]
  for item in items:
    node = Path(item.fspath).resolve().relative_to(root).as_posix() + '::' + item.name
    if node.startswith(SLOW):
      item.add_marker(pytest.mark.slow)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)


def make_hf_model(model_type: str, **overrides):
  """A small randomly initialised transformers model of `model_type`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if model_type == 'bert':
    config = transformers.BertConfig(**{**TINY, 'type_vocab_size': 3, **overrides})
    model = transformers.BertModel(config)
  elif model_type == 'roberta':
    config = transformers.RobertaConfig(**{**TINY, 'max_position_embeddings': 66,
                                           'type_vocab_size': 1, 'pad_token_id': 1,
                                           **overrides})
    model = transformers.RobertaModel(config)
  elif model_type == 'distilbert':
    config = transformers.DistilBertConfig(
        vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
        max_position_embeddings=64, **overrides)
    model = transformers.DistilBertModel(config)
  elif model_type == 'albert':
    config = transformers.AlbertConfig(**{**TINY, 'embedding_size': 16,
                                          'hidden_act': 'gelu_new', **overrides})
    model = transformers.AlbertModel(config)
  else:
    raise ValueError(model_type)
  # Random LayerNorm and bias values, so a swapped or skipped tensor shows up.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'LayerNorm' in name or 'layer_norm' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  model.set_attn_implementation('eager')  # sdpa returns no attention maps
  return model.eval()


@pytest.fixture(scope='session')
def minilm_folder():
  from research.checkpoints import resolve  # pylint: disable=g-import-not-at-top
  try:
    return resolve('minilm-l6')
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope='session')
def hf_model():
  """Factory fixture: hf_model('bert', **config_overrides) -> transformers model."""
  pytest.importorskip('torch')
  return make_hf_model


@pytest.fixture(scope='session')
def tok(minilm_folder):
  """The bundled MiniLM's fast (BERT uncased WordPiece) tokenizer."""
  from research.checkpoints import load_tokenizer  # pylint: disable=g-import-not-at-top
  return load_tokenizer(str(minilm_folder))


@pytest.fixture(scope='session')
def load_benchmark():
  """Imports a script of benchmarks/ by name (they are scripts, not a package)."""
  def load(name: str):
    path = Path(__file__).resolve().parents[1] / 'benchmarks' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  return load
