"""From a trainer config to its parts: the task model and a split's encoded features.

Shared by the trainer, saved runs, teachers and experiments/evaluate.py, so each of
them rebuilds exactly what the trainer built.
"""
from __future__ import annotations

from research import objectives
from research.data import tasks
from research.data.sources import load_examples
from research.data.tokenize import encode
from research.models.config import EncoderConfig
from research.models.heads import TaskModel


def build_model(config, spec: tasks.TaskSpec, encoder_config: EncoderConfig) -> TaskModel:
  """The task model a config describes (encoder + layer mix + the task's objective)."""
  objective = objectives.for_task(spec, pooling=config.pooling, head_hidden=config.head_hidden,
                                  head_activation=config.get('head_activation', 'tanh'),
                                  head_dropout=config.dropout,
                                  options={'token_loss': config.get('token_loss', 'batch')})
  return TaskModel(encoder_config, objective, layer_mix=config.layer_mix)


def load_split(config, spec: tasks.TaskSpec, tokenizer, split: str, limit: int = 0,
               training: bool = False) -> tuple[list, list]:
  """(examples, encoded features) of one split; the first `limit` examples if > 0."""
  examples = load_examples(spec, split, config.data_dir or None, config.data_source)
  if limit:
    examples = examples[:limit]
  features = encode(spec, examples, tokenizer, config.max_length, config.doc_stride,
                    training=training).features
  return examples, features
