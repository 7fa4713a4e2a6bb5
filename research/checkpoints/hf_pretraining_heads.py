"""Hugging Face pre-training heads <-> MaskedLM / PreTraining, for the four BERT families.

    model, params = load_pretraining_model('some/albert-folder')   # MLM + SOP
    outputs, _ = model.apply({'params': params}, ids, mask)        # {'mlm', 'pair'}
    export_pretraining_model(model, params, 'out/')                # AlbertForPreTraining

Every family's masked-LM head is our `LmTransform` ('head/{dense, layer_norm, bias}',
research/objectives/masked_lm.py): dense -> activation -> LayerNorm, then logits
through the word-embedding table (the decoder is tied on both sides) plus a bias.
    family      MLM tensors                                  pair head (on the pooler)
    bert        cls.predictions.transform.{dense,LayerNorm}  cls.seq_relationship (NSP)
                + cls.predictions.bias
    albert      predictions.{dense,LayerNorm,bias}           sop_classifier.classifier (SOP)
    roberta     lm_head.{dense,layer_norm,bias}              -
    distilbert  vocab_transform, vocab_layer_norm,           -
                vocab_projector (its bias is the output bias)
ALBERT's dense maps hidden -> embedding_size (the factorised table's width, which
`LmTransform` already uses); RoBERTa's transform is GELU whatever the encoder's
activation, the others use the encoder's. A checkpoint without a head gets a fresh
(tied) one, logged; untied decoders and head tensors we do not know are errors.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from research import objectives
from research.checkpoints import hf_export, hf_load, hf_names, hub
from research.models.heads import TaskModel

# Per family: the MLM head's tensor names, the transform's activation ('' = the
# encoder's), the pair task and its classifier, and the names of the task models.
_LAYOUTS = {
    'bert': dict(dense='cls.predictions.transform.dense',
                 norm='cls.predictions.transform.LayerNorm', bias='cls.predictions.bias',
                 decoder='cls.predictions.decoder', activation='', pair='nsp',
                 pair_out='cls.seq_relationship', prefixes=('cls.',),
                 mlm_arch='BertForMaskedLM', pair_arch='BertForPreTraining'),
    'albert': dict(dense='predictions.dense', norm='predictions.LayerNorm',
                   bias='predictions.bias', decoder='predictions.decoder', activation='',
                   pair='sop', pair_out='sop_classifier.classifier',
                   prefixes=('predictions.', 'sop_classifier.'),
                   mlm_arch='AlbertForMaskedLM', pair_arch='AlbertForPreTraining'),
    'roberta': dict(dense='lm_head.dense', norm='lm_head.layer_norm', bias='lm_head.bias',
                    decoder='lm_head.decoder', activation='gelu', pair='', pair_out='',
                    prefixes=('lm_head.',), mlm_arch='RobertaForMaskedLM', pair_arch=''),
    'distilbert': dict(dense='vocab_transform', norm='vocab_layer_norm',
                       bias='vocab_projector.bias', decoder='vocab_projector', activation='',
                       pair='', pair_out='',
                       prefixes=('vocab_transform.', 'vocab_layer_norm.', 'vocab_projector.'),
                       mlm_arch='DistilBertForMaskedLM', pair_arch=''),
}


def _layout(model_type: str, where) -> dict:
  if model_type not in _LAYOUTS:
    raise ValueError(f'{where} is a {model_type} model; pre-training heads load and export '
                     f'for {sorted(_LAYOUTS)} only')
  return _LAYOUTS[model_type]


def _check_pair(pair: str, layout: dict, model_type: str) -> None:
  if pair not in ('', layout['pair']):
    have = (f"only {layout['pair']!r} ({layout['pair_out']})" if layout['pair']
            else 'no sentence-pair head')
    raise ValueError(f"pair={pair!r} has no Hugging Face {model_type} layout: {model_type} "
                     f"pre-training has {have}; use pair='' for masked LM alone")


def _weight_bias(tensors: dict, name: str, folder) -> tuple[np.ndarray, np.ndarray]:
  try:
    return (np.asarray(tensors[f'{name}.weight'], np.float32),
            np.asarray(tensors[f'{name}.bias'], np.float32))
  except KeyError as e:
    raise hf_load.CheckpointError(f'{folder} lacks the head tensor {e.args[0]}') from None


def _read_mlm_head(tensors: dict, layout: dict, embeddings: np.ndarray, folder) -> dict:
  """'head' params from the checkpoint's MLM tensors; the decoder must be tied."""
  decoder = tensors.get(f"{layout['decoder']}.weight")
  if decoder is not None and (decoder.shape != embeddings.shape
                              or not np.allclose(decoder, embeddings)):
    raise hf_load.CheckpointError(
        f"{folder}: {layout['decoder']}.weight is not tied to the word embeddings; untied "
        'masked-LM decoders are not supported')
  bias = np.asarray(tensors[layout['bias']], np.float32)
  decoder_bias = tensors.get(f"{layout['decoder']}.bias")
  if decoder_bias is not None and not np.array_equal(decoder_bias, bias):
    raise hf_load.CheckpointError(f"{folder}: {layout['decoder']}.bias differs from "
                                  f"{layout['bias']}; the two must be one tied bias")
  kernel, dense_bias = _weight_bias(tensors, layout['dense'], folder)
  scale, norm_bias = _weight_bias(tensors, layout['norm'], folder)
  return {'dense': {'kernel': kernel.T, 'bias': dense_bias},
          'layer_norm': {'scale': scale, 'bias': norm_bias}, 'bias': bias}


def _check_shapes(loaded: dict, fresh: dict, folder) -> None:
  got = jax.tree.map(np.shape, loaded)
  want = jax.tree.map(np.shape, fresh)
  if got != want:
    raise hf_load.CheckpointError(f'{folder}: head tensors have shapes {got}, the model '
                                  f'expects {want}')


def load_pretraining_model(name: str | os.PathLike, *, pair: str | None = None,
                           dtype: str = 'float32', rng=None) -> tuple[TaskModel, dict]:
  """Loads a checkpoint with its masked-LM (and NSP / SOP) heads as a MaskedLM / PreTraining.

  Args:
    name: a checkpoint folder or Hub id: {Bert,Albert}ForPreTraining, *ForMaskedLM of
      BERT, ALBERT, RoBERTa or DistilBERT, or a bare encoder (such as the bundled MiniLM).
    pair: 'nsp' (BERT) or 'sop' (ALBERT) for MLM + that pair task, '' for MLM alone;
      None = the family's pair task when the checkpoint has its classifier, else ''.
    dtype: compute dtype of the rebuilt model.
    rng: PRNG key of heads the checkpoint lacks (default PRNGKey(0)).

  Returns:
    (TaskModel, params {'encoder', 'head'[, 'pair_head']}). A head the checkpoint lacks
    is initialised fresh (its logits still use the tied word embeddings) and logged.

  Raises:
    ValueError: an unsupported family or pair task for the family (CheckpointError, a
      ValueError, for untied decoders, missing or unknown head tensors).
  """
  folder = hub.resolve(name)
  config, hf = hf_load.read_config(folder, dtype=dtype)
  mt = config.model_type
  layout = _layout(mt, folder)
  tensors = hf_load._normalise_names(  # pylint: disable=protected-access
      hf_load.read_tensors(folder), mt)
  has_pair = bool(layout['pair_out']) and f"{layout['pair_out']}.weight" in tensors
  pair = (layout['pair'] if has_pair else '') if pair is None else pair
  _check_pair(pair, layout, mt)
  config = config.replace(use_pooler=any(n.startswith('pooler.') for n in tensors))
  mlm_fields = dict(transform_activation=layout['activation'])
  if pair:
    # ALBERT's SOP classifier has dropout before it (classifier_dropout_prob); NSP none.
    dropout = hf.get('classifier_dropout_prob', 0.1) if pair == 'sop' else 0.0
    objective = objectives.make('pretraining', pair=pair, head_dropout=dropout, **mlm_fields)
  else:
    objective = objectives.make('masked_lm', **mlm_fields)
  model = TaskModel(config, objective)
  dummy = np.zeros((1, 2), np.int32)
  # Only the heads are kept: dropping the encoder from the jitted init's outputs lets XLA
  # skip its random init.
  fresh = jax.tree.map(np.asarray, jax.jit(lambda r: {
      k: v for k, v in nn.meta.unbox(model.init(r, dummy, np.ones_like(dummy))['params']).items()
      if k != 'encoder'})(rng if rng is not None else jax.random.PRNGKey(0)))
  is_head = lambda n: n.startswith(layout['prefixes'])
  params = {'encoder': hf_load.convert(config, {k: v for k, v in tensors.items()
                                                if not is_head(k)})}
  head_names = {n for n in tensors if is_head(n)}
  used = set()
  if layout['bias'] in tensors:
    embeddings = params['encoder']['embeddings']['word_embeddings']['embedding']
    params['head'] = _read_mlm_head(tensors, layout, embeddings, folder)
    _check_shapes(params['head'], fresh['head'], folder)
    used |= {layout['bias']} | {f"{layout[part]}.{p}" for part in ('dense', 'norm', 'decoder')
                                for p in ('weight', 'bias')}
  else:
    logging.warning('%s has no masked-LM head (%s): initialised fresh (untrained, its '
                    'predictions are noise until trained), tied to its word embeddings',
                    folder, layout['bias'])
    params['head'] = fresh['head']
  if pair:
    if has_pair:
      weight, bias = _weight_bias(tensors, layout['pair_out'], folder)
      params['pair_head'] = {'out': {'kernel': weight.T, 'bias': bias}}
      _check_shapes(params['pair_head'], fresh['pair_head'], folder)
    else:
      logging.warning('%s has no %s head (%s): initialised fresh (untrained)', folder, pair,
                      layout['pair_out'])
      params['pair_head'] = fresh['pair_head']
  elif has_pair:
    logging.warning("%s: pair='' leaves the checkpoint's %s head (%s) unused", folder,
                    layout['pair'], layout['pair_out'])
  if has_pair:
    used |= {f"{layout['pair_out']}.weight", f"{layout['pair_out']}.bias"}
  unknown = sorted(head_names - used)
  if unknown:
    raise hf_load.CheckpointError(f'{folder} has head tensors this {mt} layout does not '
                                  f'know: {unknown}')
  params = jax.tree.map(lambda x: np.asarray(x).astype(config.params_dtype), params)
  return model, params


def export_pretraining_model(model: TaskModel, params: dict, folder: str | os.PathLike,
                             tokenizer_from: str | os.PathLike | None = None,
                             pad: bool = True) -> Path:
  """Writes a MaskedLM / PreTraining model as its family's Hugging Face pre-training model.

  MLM alone -> {Bert,Albert,Roberta,DistilBert}ForMaskedLM (which have no pooler: an
  encoder's pooler is not written, and logged); BERT + NSP -> BertForPreTraining; ALBERT +
  SOP -> AlbertForPreTraining. The decoder is written tied to the word embeddings. With
  `pad`, pruned layers are padded to full size with zeros (`hf_export.pad_pruned`).

  Raises:
    ValueError: naming why the model has no Hugging Face pre-training layout.
  """
  config, objective = model.encoder, model.objective
  mt = config.model_type
  layout = _layout(mt, 'this model')
  if objective.kind not in ('masked_lm', 'pretraining'):
    raise ValueError(f'pre-training heads export from masked-LM models only, got a '
                     f'{objective.kind} objective (use export_task_model)')
  pair = getattr(objective, 'pair', '')
  _check_pair(pair, layout, mt)
  if pair and objective.pooling != 'pooler':
    raise ValueError(f"{mt}'s {pair} head reads the pooler; this head has "
                     f'pooling={objective.pooling!r}')
  act = layout['activation'] or config.hidden_act
  if model.layer_mix != 'top' or (objective.transform_activation or config.hidden_act) != act:
    raise ValueError(f'{mt} pre-training heads read the top layer through a transform with '
                     f"activation {act!r}; this model has layer_mix={model.layer_mix!r}, "
                     f'transform_activation={objective.transform_activation!r}')
  encoder_params = params['encoder']
  if pad:
    config, encoder_params = hf_export.pad_pruned(config, encoder_params)
  if not pair and config.use_pooler:  # *ForMaskedLM models have no pooler
    logging.info('%s has no pooler: the encoder\'s pooler is not exported', layout['mlm_arch'])
    config = config.replace(use_pooler=False)
    encoder_params = {k: v for k, v in encoder_params.items() if k != 'pooler'}
  prefix = hf_names.BASE_PREFIX[mt]
  tensors = {prefix + k: v for k, v in hf_export.to_hf_tensors(config, encoder_params).items()}
  head = params['head']
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  tensors[f"{layout['dense']}.weight"] = f32(np.asarray(head['dense']['kernel']).T)
  tensors[f"{layout['dense']}.bias"] = f32(head['dense']['bias'])
  tensors[f"{layout['norm']}.weight"] = f32(head['layer_norm']['scale'])
  tensors[f"{layout['norm']}.bias"] = f32(head['layer_norm']['bias'])
  tensors[layout['bias']] = f32(head['bias'])
  embeddings = tensors[prefix + 'embeddings.word_embeddings.weight']
  tensors[f"{layout['decoder']}.weight"] = f32(embeddings)
  tensors[f"{layout['decoder']}.bias"] = f32(head['bias'])
  hf_config = hf_names.config_to_hf(config)
  if pair:
    out = params['pair_head']['out']
    tensors[f"{layout['pair_out']}.weight"] = f32(np.asarray(out['kernel']).T)
    tensors[f"{layout['pair_out']}.bias"] = f32(out['bias'])
    if pair == 'sop':
      hf_config['classifier_dropout_prob'] = objective.head_dropout
  hf_config['architectures'] = [layout['pair_arch'] if pair else layout['mlm_arch']]
  return hf_export.write_folder(folder, tensors, hf_config, tokenizer_from)
