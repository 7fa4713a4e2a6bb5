"""How Hugging Face tensor names and configs map onto ours, per model family.

`tensor_map(config)` lists one `Entry` per parameter of our tree: its path, the
Hugging Face tensor name (without the base-model prefix) and the kind of conversion.
The same table drives loading and exporting, so the two cannot drift apart.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from research.models.config import EncoderConfig, MODEL_TYPES

# Prefix a task model (BertForSequenceClassification, ...) puts before the encoder.
BASE_PREFIX = {'bert': 'bert.', 'roberta': 'roberta.', 'distilbert': 'distilbert.',
               'albert': 'albert.', 'gpt2': 'transformer.'}

# Checkpoint tensors that are not part of the encoder: pre-training heads, task heads
# and non-persistent buffers. They are skipped by default and reported; pass
# `ignore=()` to the loader to make any of them an error.
# Buffers are skipped silently (they are not weights); head weights with a warning.
BUFFERS = (
    r'(.*\.)?position_ids', r'(.*\.)?token_type_ids',
    r'h\.\d+\.attn\.(masked_)?bias',  # GPT-2's causal-mask buffers (older checkpoints)
)
DEFAULT_IGNORE = BUFFERS + (
    r'cls\..*', r'lm_head\..*', r'predictions\..*', r'sop_classifier\..*',
    r'vocab_(transform|layer_norm|projector)\..*',
    r'classifier\..*', r'pre_classifier\..*', r'qa_outputs\..*',
)

_HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
                   'relu': 'relu'}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: our '/'-joined path, the HF name, and the conversion kind.

  kinds: 'linear' (HF [out, in] <-> ours [in, out]), 'copy' (same layout),
  'qkv' (HF [heads*d, hidden] <-> ours [hidden, heads, d]), 'qkv_bias'
  ([heads*d] <-> [heads, d]), 'out' (HF [hidden, heads*d] <-> ours [heads, d, hidden]).
  GPT-2 (Conv1D weights stored [in, out]): 'conv_out' (HF [heads*d, hidden] <-> ours
  [heads, d, hidden]) and 'fused_q' / 'fused_k' / 'fused_v' (+ '_bias'): one third of
  the fused `c_attn` (HF [hidden, 3*heads*d] <-> ours [hidden, heads, d]); three
  entries share that HF name, and export concatenates them in q, k, v order.
  """
  ours: str
  hf: str
  kind: str


# Per family: our sub-path inside a layer -> the HF sub-name inside that layer.
_LAYER_NAMES = {
    'bert': {'attention/query': 'attention.self.query', 'attention/key': 'attention.self.key',
             'attention/value': 'attention.self.value',
             'attention/out': 'attention.output.dense',
             'attention_norm': 'attention.output.LayerNorm',
             'mlp/intermediate': 'intermediate.dense', 'mlp/output': 'output.dense',
             'output_norm': 'output.LayerNorm'},
    'distilbert': {'attention/query': 'attention.q_lin', 'attention/key': 'attention.k_lin',
                   'attention/value': 'attention.v_lin', 'attention/out': 'attention.out_lin',
                   'attention_norm': 'sa_layer_norm', 'mlp/intermediate': 'ffn.lin1',
                   'mlp/output': 'ffn.lin2', 'output_norm': 'output_layer_norm'},
    'albert': {'attention/query': 'attention.query', 'attention/key': 'attention.key',
               'attention/value': 'attention.value', 'attention/out': 'attention.dense',
               'attention_norm': 'attention.LayerNorm', 'mlp/intermediate': 'ffn',
               'mlp/output': 'ffn_output', 'output_norm': 'full_layer_layer_norm'},
}
_LAYER_NAMES['roberta'] = _LAYER_NAMES['bert']
_KINDS = {'attention/query': 'qkv', 'attention/key': 'qkv', 'attention/value': 'qkv',
          'attention/out': 'out', 'attention_norm': 'norm', 'mlp/intermediate': 'linear',
          'mlp/output': 'linear', 'output_norm': 'norm'}


def tensor_map(config: EncoderConfig) -> list[Entry]:
  """Every parameter of `config`'s encoder with its Hugging Face name."""
  mt = config.model_type
  if mt == 'gpt2':
    return _gpt2_tensor_map(config)
  entries = [Entry('embeddings/word_embeddings/embedding', 'embeddings.word_embeddings.weight',
                   'copy'),
             Entry('embeddings/position_embeddings/embedding',
                   'embeddings.position_embeddings.weight', 'copy'),
             Entry('embeddings/layer_norm/scale', 'embeddings.LayerNorm.weight', 'copy'),
             Entry('embeddings/layer_norm/bias', 'embeddings.LayerNorm.bias', 'copy')]
  if config.type_vocab_size:
    entries.append(Entry('embeddings/token_type_embeddings/embedding',
                         'embeddings.token_type_embeddings.weight', 'copy'))
  if config.embed_size != config.hidden_size:
    if mt != 'albert':
      raise ValueError(f'A factorised embedding has no Hugging Face name for {mt!r}')
    entries += [Entry('embeddings/projection/kernel',
                      'encoder.embedding_hidden_mapping_in.weight', 'linear'),
                Entry('embeddings/projection/bias',
                      'encoder.embedding_hidden_mapping_in.bias', 'copy')]
  if mt == 'albert':
    # ALBERT's layer groups are our parameter sets: application i runs group
    # i * groups // num_layers for both blocks (`EncoderConfig.shared(groups)`).
    groups = config.parameter_sets
    if config != config.shared(groups):
      raise ValueError('ALBERT checkpoints share whole layers in groups: attention_map and '
                       f'ffn_map must equal EncoderConfig.shared({groups}) maps')
    layers = [(f'layer_{g}', f'encoder.albert_layer_groups.{g}.albert_layers.0.')
              for g in range(groups)]
  elif config.attention_map is not None or config.ffn_map is not None:
    raise ValueError(f'Cross-layer sharing has no Hugging Face layout for {mt!r}')
  else:
    hf_stack = 'transformer.layer' if mt == 'distilbert' else 'encoder.layer'
    layers = [(f'layer_{i}', f'{hf_stack}.{i}.') for i in range(config.num_layers)]
  for i, (ours, hf) in enumerate(layers):
    for sub, hf_sub in _LAYER_NAMES[mt].items():
      name, kind = hf + hf_sub, _KINDS[sub]
      if sub == 'mlp/intermediate' and config.ffn(i) == 0:
        continue
      if sub == 'mlp/output' and config.ffn(i) == 0:
        entries.append(Entry(f'{ours}/mlp/output_bias', f'{name}.bias', 'copy'))
        continue
      if kind == 'norm':
        entries += [Entry(f'{ours}/{sub}/scale', f'{name}.weight', 'copy'),
                    Entry(f'{ours}/{sub}/bias', f'{name}.bias', 'copy')]
      else:
        entries += [Entry(f'{ours}/{sub}/kernel', f'{name}.weight', kind),
                    Entry(f'{ours}/{sub}/bias', f'{name}.bias',
                          'qkv_bias' if kind == 'qkv' else 'copy')]
  if config.use_pooler:
    pooler = 'pooler.' if mt == 'albert' else 'pooler.dense.'
    entries += [Entry('pooler/kernel', pooler + 'weight', 'linear'),
                Entry('pooler/bias', pooler + 'bias', 'copy')]
  return entries


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape that corresponds to our parameter `shape`."""
  if kind in FUSED_PART:  # the whole fused c_attn tensor, of which we are one third
    return (shape[0], 3 * shape[1] * shape[2])
  if kind in FUSED_BIAS_PART:
    return (3 * int(np.prod(shape)),)
  if kind == 'conv_out':
    return (shape[0] * shape[1], shape[2])
  if kind == 'linear':
    return tuple(reversed(shape))
  if kind == 'qkv':
    return (shape[1] * shape[2], shape[0])
  if kind == 'qkv_bias':
    return (int(np.prod(shape)),)
  if kind == 'out':
    return (shape[2], shape[0] * shape[1])
  return tuple(shape)


def to_ours(kind: str, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Converts one HF tensor (already checked against `hf_shape`) to our `shape`."""
  part = FUSED_PART.get(kind, FUSED_BIAS_PART.get(kind))
  if part is not None:  # c_attn's columns are [q | k | v], each heads * d wide
    width = tensor.shape[-1] // 3
    return tensor[..., part * width:(part + 1) * width].reshape(shape)
  if kind in ('linear', 'qkv', 'out'):
    tensor = tensor.T
  return tensor.reshape(shape)


def to_hf(kind: str, array: np.ndarray) -> np.ndarray:
  """Converts one of our arrays to the HF layout (inverse of `to_ours`); a fused
  part gives its third of the HF tensor (`hf_export` concatenates the three)."""
  if kind in FUSED_PART:
    return array.reshape(array.shape[0], -1)
  if kind in FUSED_BIAS_PART:
    return array.reshape(-1)
  if kind == 'conv_out':
    return array.reshape(-1, array.shape[-1])
  if kind == 'linear':
    return array.T
  if kind == 'qkv':
    return array.reshape(array.shape[0], -1).T
  if kind == 'qkv_bias':
    return array.reshape(-1)
  if kind == 'out':
    return array.reshape(-1, array.shape[-1]).T
  return array


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> EncoderConfig:
  """Maps a Hugging Face config.json dict to an `EncoderConfig`."""
  mt = hf.get('model_type')
  if mt not in MODEL_TYPES:
    raise ValueError(f'Unsupported model_type {mt!r} in config.json; supported: '
                     f'{list(MODEL_TYPES)}')
  if mt == 'gpt2':
    return _gpt2_config_from_hf(hf, **overrides)
  if mt == 'distilbert':
    act = hf.get('activation', 'gelu')
    values = dict(vocab_size=hf['vocab_size'], hidden_size=hf['dim'],
                  num_layers=hf['n_layers'], num_heads=hf['n_heads'],
                  intermediate_size=hf['hidden_dim'],
                  max_position_embeddings=hf['max_position_embeddings'],
                  type_vocab_size=0, layer_norm_eps=1e-12,
                  hidden_dropout=hf.get('dropout', 0.1),
                  attention_dropout=hf.get('attention_dropout', 0.1))
  else:
    pet = hf.get('position_embedding_type', 'absolute')
    if pet != 'absolute':
      raise ValueError(f'position_embedding_type={pet!r} is not supported (only absolute)')
    act = hf.get('hidden_act', 'gelu')
    values = dict(vocab_size=hf['vocab_size'], hidden_size=hf['hidden_size'],
                  num_layers=hf['num_hidden_layers'], num_heads=hf['num_attention_heads'],
                  intermediate_size=hf['intermediate_size'],
                  max_position_embeddings=hf['max_position_embeddings'],
                  type_vocab_size=hf.get('type_vocab_size', 2),
                  layer_norm_eps=hf.get('layer_norm_eps', 1e-12),
                  hidden_dropout=hf.get('hidden_dropout_prob', 0.1),
                  attention_dropout=hf.get('attention_probs_dropout_prob', 0.1))
  if act not in _HF_ACTIVATIONS:
    raise ValueError(f'Unsupported activation {act!r}; supported: {sorted(_HF_ACTIVATIONS)}')
  values['hidden_act'] = _HF_ACTIVATIONS[act]
  values['pad_token_id'] = hf.get('pad_token_id', 0) or 0
  values['model_type'] = mt
  values['head_dim'] = values['hidden_size'] // values['num_heads']
  if mt == 'roberta':
    values['position_offset'] = values['pad_token_id'] + 1
  if mt == 'albert':
    if hf.get('inner_group_num', 1) != 1:
      raise ValueError('Only ALBERT with inner_group_num=1 is supported')
    groups = hf.get('num_hidden_groups', 1)
    values['embedding_size'] = hf['embedding_size']
    mapping = tuple(i * groups // values['num_layers'] for i in range(values['num_layers']))
    values['attention_map'] = values['ffn_map'] = mapping
  pruned = hf.get('pruned_heads') or {}
  if pruned:
    heads = [values['num_heads'] - len(pruned.get(str(i), pruned.get(i, ())))
             for i in range(values['num_layers'])]
    values['num_heads'] = tuple(heads)
  values.update(overrides)
  return EncoderConfig(**values)


def config_to_hf(config: EncoderConfig) -> dict[str, Any]:
  """Maps an `EncoderConfig` back to a Hugging Face config.json dict."""
  mt = config.model_type
  if mt == 'gpt2':
    return _gpt2_config_to_hf(config)
  if not isinstance(config.intermediate_size, int):
    raise ValueError('Hugging Face configs cannot express per-layer FFN widths '
                     f'{config.intermediate_size}; keep the checkpoint in our format')
  if config.embed_size != config.hidden_size and (mt != 'albert'
                                                  or config.embedding_project_first):
    raise ValueError(
        f'a factorised embedding ({config.embed_size} -> {config.hidden_size}) has a Hugging '
        f'Face form only as ALBERT, normalised before the projection; this {mt} model '
        f'(embedding_project_first={config.embedding_project_first}) has none: keep the '
        'run in our format, or fine-tune the unfactorised model')
  full_heads = config.hidden_size // config.head_dim
  if full_heads * config.head_dim != config.hidden_size:
    raise ValueError(f'head_dim={config.head_dim} does not divide hidden_size')
  pruned = {str(i): list(range(config.heads(i), full_heads)) for i in range(config.num_layers)
            if config.heads(i) != full_heads}
  act = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu'}[config.hidden_act]
  arch = {'bert': 'BertModel', 'roberta': 'RobertaModel', 'distilbert': 'DistilBertModel',
          'albert': 'AlbertModel'}[mt]
  hf: dict[str, Any] = {'model_type': mt, 'architectures': [arch],
                        'vocab_size': config.vocab_size, 'pad_token_id': config.pad_token_id,
                        'max_position_embeddings': config.max_position_embeddings}
  if pruned:
    hf['pruned_heads'] = pruned
  if mt == 'distilbert':
    hf.update(dim=config.hidden_size, n_layers=config.num_layers, n_heads=full_heads,
              hidden_dim=config.intermediate_size, activation=act,
              dropout=config.hidden_dropout, attention_dropout=config.attention_dropout)
    return hf
  hf.update(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=full_heads, intermediate_size=config.intermediate_size,
            type_vocab_size=config.type_vocab_size, hidden_act=act,
            layer_norm_eps=config.layer_norm_eps,
            hidden_dropout_prob=config.hidden_dropout,
            attention_probs_dropout_prob=config.attention_dropout)
  if mt == 'albert':
    hf.update(embedding_size=config.embed_size, num_hidden_groups=config.parameter_sets,
              inner_group_num=1)
  return hf


# -- GPT-2 -------------------------------------------------------------------------
# GPT-2 is our encoder with pre-LayerNorm blocks, a final LayerNorm, no embedding
# LayerNorm, no token types, no pooler and a causal mask (`gpt2_config`). Its Conv1D
# weights are stored [in, out] (our dense layout), and Q, K, V are one fused `c_attn`.
FUSED_PART = {'fused_q': 0, 'fused_k': 1, 'fused_v': 2}
FUSED_BIAS_PART = {'fused_q_bias': 0, 'fused_k_bias': 1, 'fused_v_bias': 2}


def _gpt2_tensor_map(config: EncoderConfig) -> list[Entry]:
  """GPT-2's names (GPT2Model's, without the LM model's 'transformer.' prefix)."""
  if config.attention_map is not None or config.ffn_map is not None:
    raise ValueError('Cross-layer sharing has no Hugging Face layout for gpt2')
  if config.use_pooler or config.type_vocab_size or config.embedding_norm:
    raise ValueError('a gpt2 checkpoint has no pooler, token types or embedding LayerNorm; '
                     'build the config with hf_names.gpt2_config (or config_from_hf)')
  if config.embed_size != config.hidden_size:
    raise ValueError('A factorised embedding has no Hugging Face name for gpt2')
  entries = [Entry('embeddings/word_embeddings/embedding', 'wte.weight', 'copy'),
             Entry('embeddings/position_embeddings/embedding', 'wpe.weight', 'copy')]
  for i in range(config.num_layers):
    ours, hf = f'layer_{i}', f'h.{i}.'
    entries += [Entry(f'{ours}/attention_norm/scale', hf + 'ln_1.weight', 'copy'),
                Entry(f'{ours}/attention_norm/bias', hf + 'ln_1.bias', 'copy')]
    for name in ('q', 'k', 'v'):
      sub = {'q': 'query', 'k': 'key', 'v': 'value'}[name]
      entries += [Entry(f'{ours}/attention/{sub}/kernel', hf + 'attn.c_attn.weight',
                        f'fused_{name}'),
                  Entry(f'{ours}/attention/{sub}/bias', hf + 'attn.c_attn.bias',
                        f'fused_{name}_bias')]
    entries += [Entry(f'{ours}/attention/out/kernel', hf + 'attn.c_proj.weight', 'conv_out'),
                Entry(f'{ours}/attention/out/bias', hf + 'attn.c_proj.bias', 'copy'),
                Entry(f'{ours}/output_norm/scale', hf + 'ln_2.weight', 'copy'),
                Entry(f'{ours}/output_norm/bias', hf + 'ln_2.bias', 'copy')]
    if config.ffn(i) == 0:
      entries.append(Entry(f'{ours}/mlp/output_bias', hf + 'mlp.c_proj.bias', 'copy'))
      continue
    entries += [Entry(f'{ours}/mlp/intermediate/kernel', hf + 'mlp.c_fc.weight', 'copy'),
                Entry(f'{ours}/mlp/intermediate/bias', hf + 'mlp.c_fc.bias', 'copy'),
                Entry(f'{ours}/mlp/output/kernel', hf + 'mlp.c_proj.weight', 'copy'),
                Entry(f'{ours}/mlp/output/bias', hf + 'mlp.c_proj.bias', 'copy')]
  entries += [Entry('final_norm/scale', 'ln_f.weight', 'copy'),
              Entry('final_norm/bias', 'ln_f.bias', 'copy')]
  if not config.tie_word_embeddings:  # beside the base model, not under 'transformer.'
    entries.append(Entry('lm_head/embedding', 'lm_head.weight', 'copy'))
  return entries


def gpt2_config(**values: Any) -> EncoderConfig:
  """An `EncoderConfig` of GPT-2's architecture; `values` are EncoderConfig fields."""
  return EncoderConfig(**{**dict(
      norm_position='pre', embedding_norm=False, causal=True, type_vocab_size=0,
      use_pooler=False, hidden_act='gelu_tanh', layer_norm_eps=1e-5, model_type='gpt2'),
      **values})


def _gpt2_config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> EncoderConfig:
  # Variants whose computation our blocks do not reproduce are refused, not approximated.
  if hf.get('scale_attn_by_inverse_layer_idx', False):
    raise ValueError('GPT-2 with scale_attn_by_inverse_layer_idx=True is not supported')
  if not hf.get('scale_attn_weights', True):
    raise ValueError('GPT-2 with scale_attn_weights=False is not supported')
  if hf.get('add_cross_attention', False):
    raise ValueError('GPT-2 with cross-attention (add_cross_attention=True) is not supported')
  act = hf.get('activation_function', 'gelu_new')
  if act not in _HF_ACTIVATIONS:
    raise ValueError(f'Unsupported activation {act!r}; supported: {sorted(_HF_ACTIVATIONS)}')
  hidden, heads = hf['n_embd'], hf['n_head']
  if hidden % heads:
    raise ValueError(f'n_embd={hidden} is not divisible by n_head={heads}')
  pad = hf.get('pad_token_id')
  values = dict(vocab_size=hf['vocab_size'], hidden_size=hidden, num_layers=hf['n_layer'],
                num_heads=heads, head_dim=hidden // heads,
                intermediate_size=hf.get('n_inner') or 4 * hidden,
                max_position_embeddings=hf.get('n_positions', hf.get('n_ctx', 1024)),
                hidden_act=_HF_ACTIVATIONS[act],
                layer_norm_eps=hf.get('layer_norm_epsilon', 1e-5),
                # GPT-2's three dropouts map to our two; embd_pdrop equals resid_pdrop in
                # every released checkpoint.
                hidden_dropout=hf.get('resid_pdrop', 0.1),
                attention_dropout=hf.get('attn_pdrop', 0.1),
                # GPT-2 has no padding token; generation pads with eos (the usual choice).
                pad_token_id=pad if pad is not None else hf.get('eos_token_id', 0) or 0,
                tie_word_embeddings=bool(hf.get('tie_word_embeddings', True)),
                # As written, even outside the vocabulary (configs copied from GPT-2 to a
                # small vocabulary keep 50256): an export writes them back unchanged.
                bos_token_id=hf.get('bos_token_id'), eos_token_id=hf.get('eos_token_id'))
  if values['pad_token_id'] >= values['vocab_size']:  # tiny test configs keep eos=50256
    values['pad_token_id'] = 0
  values.update(overrides)
  return gpt2_config(**values)


def _gpt2_config_to_hf(config: EncoderConfig) -> dict[str, Any]:
  full_heads = config.hidden_size // config.head_dim
  if full_heads * config.head_dim != config.hidden_size:
    raise ValueError(f'head_dim={config.head_dim} does not divide hidden_size')
  if not isinstance(config.intermediate_size, int) or any(
      config.heads(i) != full_heads for i in range(config.num_layers)):
    raise ValueError('GPT-2 configs cannot express pruned heads or per-layer FFN widths; '
                     'export with pad=True (the default)')
  if (config.norm_position, config.embedding_norm, config.causal) != ('pre', False, True):
    raise ValueError('a gpt2 model must be pre-LN, causal and without an embedding LayerNorm')
  act = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu'}[config.hidden_act]
  return {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'],
          'vocab_size': config.vocab_size, 'n_positions': config.max_position_embeddings,
          'n_embd': config.hidden_size, 'n_layer': config.num_layers, 'n_head': full_heads,
          'n_inner': config.intermediate_size, 'activation_function': act,
          'layer_norm_epsilon': config.layer_norm_eps, 'resid_pdrop': config.hidden_dropout,
          'embd_pdrop': config.hidden_dropout, 'attn_pdrop': config.attention_dropout,
          'scale_attn_weights': True, 'tie_word_embeddings': config.tie_word_embeddings,
          'bos_token_id': config.bos_token_id, 'eos_token_id': config.eos_token_id}
