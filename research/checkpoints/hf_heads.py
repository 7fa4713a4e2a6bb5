"""Hugging Face task heads <-> our objectives: fine-tuned Hub models load with their heads.

    model, params, labels = load_task_model('some-org/bert-finetuned-sst2')
    logits, _ = model.apply({'params': params}, ids, mask)      # as transformers' logits
    export_task_model(model, params, 'out/', tokenizer_from=...)  # and back

Supported heads (BERT, RoBERTa, DistilBERT, ALBERT):
  *ForSequenceClassification  -> Classification, or Regression with one label
  *ForTokenClassification     -> Tagging
  *ForQuestionAnswering       -> Span
Each family's sequence head maps onto our `Head`: BERT and ALBERT read the pooler
('pooler' pooling, one linear 'classifier'); RoBERTa reads the first token through
'classifier.dense' + tanh + 'classifier.out_proj'; DistilBERT through 'pre_classifier' +
ReLU + 'classifier'. Token and span heads are one linear layer on every token
('classifier', 'qa_outputs'). The label count comes from the weights; a config whose
`id2label` disagrees is an error. Dropout before the heads only acts in training.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from research import objectives
from research.checkpoints import hf_export, hf_load, hf_names, hub
# Pre-training heads (MLM, NSP, SOP) live in hf_pretraining_heads; re-exported here.
from research.checkpoints.hf_pretraining_heads import (  # pylint: disable=unused-import
    export_pretraining_model, load_pretraining_model)
from research.models.heads import TaskModel

# Per family: how a sequence classifier reads the encoder and which tensors it has.
_SEQUENCE_HEADS = {
    'bert': dict(pooling='pooler', activation='tanh', dense=None, out='classifier'),
    'albert': dict(pooling='pooler', activation='tanh', dense=None, out='classifier'),
    'roberta': dict(pooling='cls', activation='tanh', dense='classifier.dense',
                    out='classifier.out_proj'),
    'distilbert': dict(pooling='cls', activation='relu', dense='pre_classifier',
                       out='classifier'),
}
# Tensors of our table that sit beside the base model in a task model's checkpoint.
OUTSIDE_BASE = ('lm_head.weight',)


def _with_base_prefix(tensors: dict[str, Any], model_type: str) -> dict[str, Any]:
  """Names as a task model (GPT2LMHeadModel, ...) stores them: the base prefix added,
  except for the tensors that sit beside the base model (an untied `lm_head`)."""
  prefix = hf_names.BASE_PREFIX[model_type]
  return {(k if k in OUTSIDE_BASE else prefix + k): v for k, v in tensors.items()}


_TOKEN_OUT = 'classifier'
_SPAN_OUT = 'qa_outputs'
_ARCH_SUFFIX = {'classification': 'ForSequenceClassification',
                'regression': 'ForSequenceClassification',
                'tagging': 'ForTokenClassification', 'span': 'ForQuestionAnswering'}
_ARCH_PREFIX = {'bert': 'Bert', 'roberta': 'Roberta', 'distilbert': 'DistilBert',
                'albert': 'Albert'}


def _head_kind(hf: dict, tensors: dict) -> str:
  """'sequence', 'token' or 'span' from the config's architectures and the tensors."""
  architectures = ' '.join(hf.get('architectures') or [])
  if f'{_SPAN_OUT}.weight' in tensors or 'QuestionAnswering' in architectures:
    return 'span'
  if 'TokenClassification' in architectures:
    return 'token'
  if 'SequenceClassification' in architectures:
    return 'sequence'
  raise hf_load.CheckpointError(
      f'config.json names architectures {hf.get("architectures")}, not a sequence or token '
      'classifier or question answering model; load the encoder with load_pretrained')


def _linear(tensors: dict, name: str, folder) -> dict:
  try:
    weight, bias = tensors[f'{name}.weight'], tensors[f'{name}.bias']
  except KeyError as e:
    raise hf_load.CheckpointError(f'{folder} lacks the head tensor {e.args[0]}') from None
  return {'kernel': np.asarray(weight, np.float32).T, 'bias': np.asarray(bias, np.float32)}


def _label_names(hf: dict, num_labels: int, folder, given=None,
                 given_count: int | None = None) -> tuple[str, ...]:
  """The outputs' label names: the caller's (`given`, or `given_count` generic ones),
  else the config's id2label, which must have one name per output row."""
  if given is not None or given_count is not None:
    names = (tuple(given) if given is not None
             else tuple(f'LABEL_{i}' for i in range(given_count)))
    if len(names) != num_labels:
      raise hf_load.CheckpointError(
          f'{folder}: {len(names)} label(s) given but the classifier has {num_labels} '
          'output rows; give one label per row')
    return names
  id2label = hf.get('id2label')
  if not id2label:
    return tuple(f'LABEL_{i}' for i in range(num_labels))
  if len(id2label) != num_labels:
    raise hf_load.CheckpointError(
        f'{folder}/config.json has {len(id2label)} labels in id2label but the classifier '
        f'has {num_labels} output rows. Give the labels yourself: '
        f'load_task_model(..., num_labels={num_labels}) for generic names LABEL_0.., or '
        f'label_names=[...] with {num_labels} names (experiments.evaluate: --hf_num_labels '
        f'{num_labels} or --hf_labels a,b,...); or fix id2label in config.json')
  return tuple(id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(num_labels))


def load_task_model(name: str | os.PathLike, *, dtype: str = 'float32',
                    head_dropout: float = 0.1, label_names: Sequence[str] | None = None,
                    num_labels: int | None = None
                    ) -> tuple[TaskModel, dict, tuple[str, ...]]:
  """Loads a fine-tuned Hugging Face classifier, tagger or QA model with its head.

  Args:
    name: a checkpoint folder or Hub id of a *ForSequenceClassification,
      *ForTokenClassification or *ForQuestionAnswering model.
    dtype: compute dtype of the rebuilt model.
    head_dropout: dropout before the head's output layer (training only).
    label_names: the outputs' labels, in row order, instead of the config's id2label
      (for a config whose id2label does not match the classifier).
    num_labels: or only their number: generic names LABEL_0, ... (as transformers
      builds when config and weights disagree).

  Returns:
    (TaskModel, params {'encoder', 'head'}, label names in output order).
  """
  folder = hub.resolve(name)
  config, hf = hf_load.read_config(folder, dtype=dtype)
  tensors = hf_load._normalise_names(hf_load.read_tensors(folder), hf['model_type'])  # pylint: disable=protected-access
  kind = _head_kind(hf, tensors)
  mt = config.model_type
  if kind == 'sequence':
    layout = _SEQUENCE_HEADS[mt]
    head = {'out': _linear(tensors, layout['out'], folder)}
    if layout['dense']:
      head['dense'] = _linear(tensors, layout['dense'], folder)
    rows = head['out']['bias'].shape[0]
    regression = hf.get('problem_type') == 'regression' or rows == 1
    fields = dict(pooling=layout['pooling'], head_activation=layout['activation'],
                  head_hidden=head['dense']['bias'].shape[0] if 'dense' in head else 0,
                  head_dropout=head_dropout)
    objective = (objectives.make('regression', **fields) if regression else
                 objectives.make('classification', num_labels=rows, **fields))
    used = {f'{n}.{p}' for n in (layout['out'], layout['dense']) if n for p in ('weight', 'bias')}
  else:
    out = _SPAN_OUT if kind == 'span' else _TOKEN_OUT
    head = {'out': _linear(tensors, out, folder)}
    rows = head['out']['bias'].shape[0]
    objective = (objectives.make('span', head_dropout=head_dropout) if kind == 'span' else
                 objectives.make('tagging', num_labels=rows, head_dropout=head_dropout))
    used = {f'{out}.weight', f'{out}.bias'}
  has_pooler = any(n.startswith('pooler.') for n in tensors)
  config = config.replace(use_pooler=has_pooler)
  encoder_tensors = {k: v for k, v in tensors.items() if k not in used}
  encoder = hf_load.convert(config, encoder_tensors)
  labels = (_label_names(hf, rows, folder, label_names, num_labels) if kind != 'span'
            else ('start', 'end'))
  head = {k: {p: v.astype(config.params_dtype) for p, v in d.items()} for k, d in head.items()}
  return TaskModel(config, objective), {'encoder': encoder, 'head': head}, labels


def reorder_labels(params: dict, labels: tuple[str, ...], task_labels: tuple[str, ...]) -> dict:
  """Permutes the output layer so output i is `task_labels[i]` (case-insensitive names).

  Checkpoints with generic names ('LABEL_0', ...) keep their order; other names must be
  the task's, in any order.
  """
  if all(label.upper().startswith('LABEL_') for label in labels):
    if len(labels) != len(task_labels):
      raise ValueError(f'The model has {len(labels)} outputs, the task {len(task_labels)} labels')
    return params
  ours = [label.lower() for label in labels]
  wanted = [label.lower() for label in task_labels]
  if sorted(ours) != sorted(wanted):
    raise ValueError(f'The model predicts {list(labels)}, the task has {list(task_labels)}')
  order = [ours.index(label) for label in wanted]
  out = params['head']['out']
  head = {**params['head'], 'out': {'kernel': out['kernel'][:, order], 'bias': out['bias'][order]}}
  return {**params, 'head': head}


def task_tensors(model: TaskModel, params: dict, pad: bool = True
                 ) -> tuple[dict, dict, Any]:
  """(HF tensors with the base-model prefix and head, HF config additions, encoder config).

  Raises ValueError naming why when the head has no Hugging Face layout. With `pad`,
  pruned layers are padded to full size with zeros (`hf_export.pad_pruned`).
  """
  config, objective = model.encoder, model.objective
  encoder_params = params['encoder']
  if pad:
    config, encoder_params = hf_export.pad_pruned(config, encoder_params)
  mt = config.model_type
  kind = objective.kind
  if model.layer_mix != 'top':
    raise ValueError(f"A head on layer_mix={model.layer_mix!r} has no Hugging Face layout "
                     "(their heads read the top layer)")
  if kind == 'causal_lm' and mt == 'gpt2':  # the LM head: tied, or the encoder's lm_head
    tensors = _with_base_prefix(hf_export.to_hf_tensors(config, encoder_params), mt)
    return tensors, {'architectures': ['GPT2LMHeadModel']}, config
  if kind not in _ARCH_SUFFIX or mt not in _ARCH_PREFIX:
    raise ValueError(f'A {mt} model with a {kind} head has no Hugging Face task-model export '
                     'here' + (' (use export_pretraining_model)' if kind in (
                         'masked_lm', 'pretraining') else ''))
  head = params['head']
  if kind in ('classification', 'regression'):
    layout = _SEQUENCE_HEADS[mt]
    want = (layout['pooling'], layout['activation'] if layout['dense'] else None,
            bool(layout['dense']))
    got = (objective.pooling, objective.head_activation if objective.head_hidden else None,
           bool(objective.head_hidden))
    if want != got:
      raise ValueError(f'{mt} sequence heads pool with {want[0]!r}'
                       + (f' and a {want[1]} dense' if want[2] else ' and no dense layer')
                       + f'; this head has pooling={got[0]!r}, head_hidden='
                       f'{objective.head_hidden}, so transformers cannot load it')
    names = {'out': layout['out'], 'dense': layout['dense']}
  else:
    if objective.head_hidden:
      raise ValueError(f'{kind} heads in transformers have no hidden dense layer')
    names = {'out': _SPAN_OUT if kind == 'span' else _TOKEN_OUT}
  tensors = {hf_names.BASE_PREFIX[mt] + k: v
             for k, v in hf_export.to_hf_tensors(config, encoder_params).items()}
  for part, values in head.items():
    tensors[f'{names[part]}.weight'] = np.ascontiguousarray(np.asarray(values['kernel'],
                                                                       np.float32).T)
    tensors[f'{names[part]}.bias'] = np.asarray(values['bias'], np.float32)
  extra: dict[str, Any] = {'architectures': [_ARCH_PREFIX[mt] + _ARCH_SUFFIX[kind]]}
  if kind in ('classification', 'tagging'):
    extra['num_labels'] = objective.num_labels
  if kind == 'regression':
    extra.update(num_labels=1, problem_type='regression')
  return tensors, extra, config


def export_task_model(model: TaskModel, params: dict, folder: str | os.PathLike,
                      label_names: tuple[str, ...] | None = None,
                      tokenizer_from: str | os.PathLike | None = None,
                      pad: bool = True) -> Path:
  """Writes a TaskModel as a Hugging Face *For{Sequence,Token}Classification / QA folder.

  With `pad` (default) pruned layers are written at full size with zero weights (same
  outputs, any transformers version); without, as `pruned_heads` (transformers < 5),
  and per-layer FFN widths are refused.
  """
  tensors, extra, encoder_config = task_tensors(model, params, pad)
  hf_config = {**hf_names.config_to_hf(encoder_config), **extra}
  if model.objective.kind == 'causal_lm':
    hf_config.update(_special_ids(encoder_config, tokenizer_from))
  if label_names:
    hf_config['id2label'] = {str(i): name for i, name in enumerate(label_names)}
    hf_config['label2id'] = {name: i for i, name in enumerate(label_names)}
  elif 'num_labels' in extra:
    hf_config['id2label'] = {str(i): f'LABEL_{i}' for i in range(extra['num_labels'])}
    hf_config['label2id'] = {f'LABEL_{i}': i for i in range(extra['num_labels'])}
  hf_config.pop('num_labels', None)
  return hf_export.write_folder(folder, tensors, hf_config, tokenizer_from)


def _special_ids(config, tokenizer_from) -> dict:
  """bos / eos ids a decoder's export writes: the checkpoint's own (kept as they were),
  else those of the run's tokenizer; never an id mapped onto another token."""
  if config.bos_token_id is not None or config.eos_token_id is not None:
    return {'bos_token_id': config.bos_token_id, 'eos_token_id': config.eos_token_id}
  ids = {}
  if tokenizer_from is not None:
    tokenizer = hf_load.load_tokenizer_folder(tokenizer_from)
    ids = {f'{k}_token_id': getattr(tokenizer, f'{k}_token_id', None) for k in ('bos', 'eos')}
    ids = {k: v for k, v in ids.items() if v is not None and v < config.vocab_size}
  if len(ids) < 2:
    logging.warning('The exported decoder has no %s token id (its tokenizer defines none); '
                    'generation with transformers needs eos_token_id set to stop early',
                    ' / '.join(k[:3] for k in ('bos_token_id', 'eos_token_id') if k not in ids))
  return {'bos_token_id': ids.get('bos_token_id'), 'eos_token_id': ids.get('eos_token_id')}
