"""The encoder's configuration: a frozen, hashable dataclass.

A model is fully described by an `EncoderConfig` plus a params pytree. Fields that
structural transforms change per layer (attention heads, FFN width) accept either an
int (same for every layer) or a tuple with one entry per layer; `heads(i)` and `ffn(i)`
read them uniformly.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax.numpy as jnp

from research.models.rules import check_rules

ACTIVATIONS = ('gelu', 'gelu_tanh', 'relu')
NORM_POSITIONS = ('post', 'pre')
MODEL_TYPES = ('bert', 'roberta', 'distilbert', 'albert', 'gpt2')
DTYPES = ('float32', 'bfloat16', 'float16')
# Fields holding ((site_regex, spec), ...) rule lists (`rules.py`).
RULE_FIELDS = ('projections', 'products', 'hooks', 'nonlinear')


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Hyper-parameters of a BERT-family encoder.

  Attributes:
    vocab_size: rows of the word-embedding table.
    hidden_size: width of the residual stream.
    num_layers: number of Transformer layers applied (applications, when shared).
    num_heads: attention heads, an int or one int per layer (0 removes attention).
    head_dim: width of one head; defaults to hidden_size // num_heads of the
      original model and stays fixed when heads are pruned.
    intermediate_size: FFN width, an int or one int per layer.
    embedding_size: width of the embedding tables; when smaller than hidden_size an
      embedding projection is added (ALBERT's factorised embedding).
    embedding_project_first: with a factorised embedding, project to hidden_size
      before the embedding LayerNorm instead of after it (ALBERT normalises at the
      embedding width). A truncated-SVD factorisation of a pre-trained table
      (`transforms/low_rank.factorize_embeddings`) needs this order to start close to
      the model it came from; transformers has no such model, so it does not export.
    max_position_embeddings: rows of the position table.
    type_vocab_size: token-type rows; 0 means the model has no token types.
    position_offset: RoBERTa numbers positions from pad_token_id + 1; 0 for BERT.
    hidden_act: 'gelu' (exact, erf), 'gelu_tanh' or 'relu'.
    layer_norm_eps: epsilon of every LayerNorm.
    hidden_dropout: dropout on embeddings and on each sub-layer's output.
    attention_dropout: dropout on attention probabilities.
    attention_map: for each application i, the parameter set `layer_<j>` whose
      attention block (attention + attention_norm) it runs; None = its own (j = i).
      All zeros shares one attention across layers; (0, 0, 1, 1, ...) shares by pairs.
    ffn_map: the same for the FFN block (mlp + output_norm). ALBERT's cross-layer
      sharing sets both maps to zeros (see `shared`).
    norm_position: 'post' (BERT: x = LN(x + f(x))) or 'pre' (x = x + f(LN(x)), with a
      final LayerNorm 'final_norm' after the last layer, as GPT-2).
    embedding_norm: LayerNorm on the embedding output (BERT family yes, GPT-2 no).
    causal: each token attends only to itself and earlier tokens (decoders).
    fuse_qkv: run Q, K and V as one product where all three are projections of one
      kind that can fuse (`dense`, `int8`) under one product (faster on CPU; an interceptor such as qwix then
      sees one product of a concatenated kernel, so turn it off for those).
    projections: rules ((site_regex, kind), ...) choosing how each projection stores
      its kernel (`projections.py`); unmatched sites are 'dense'.
    products: rules ((site_regex, product), ...) choosing the function that
      multiplies at each site (`products.py`); unmatched sites are 'default'.
    hooks: rules ((site_regex, hook), ...) acting on named activations between
      products (softmax, GELU, LayerNorm in/out, embedding output; `hooks.py`);
      unmatched sites are 'identity'.
    nonlinear: rules ((site_regex, family), ...) choosing the arithmetic of each
      softmax, FFN activation and LayerNorm (`nonlinear.py`; e.g. I-BERT's integer
      kernels); unmatched sites are 'default' (float32).
    use_pooler: whether a pooler (tanh dense on the first token) exists.
    tie_word_embeddings: output logits (`Encoder.attend`: masked LM, causal LM) use the
      word-embedding table; False gives the model its own output table 'lm_head'
      [vocab, hidden] (GPT-2 folders with an untied `lm_head.weight`).
    pad_token_id: id of the padding token.
    bos_token_id, eos_token_id: the checkpoint's begin / end of sequence ids, kept as
      the source wrote them (even outside the vocabulary) so an export writes them back;
      None when unknown.
    model_type: the checkpoint family, used for Hugging Face name mapping.
    dtype: compute dtype name ('float32', 'bfloat16', 'float16').
    param_dtype: parameter dtype name.
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int | tuple[int, ...] = 12
  head_dim: int | None = None
  intermediate_size: int | tuple[int, ...] = 3072
  embedding_size: int | None = None
  embedding_project_first: bool = False
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  position_offset: int = 0
  hidden_act: str = 'gelu'
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  attention_map: tuple[int, ...] | None = None
  ffn_map: tuple[int, ...] | None = None
  norm_position: str = 'post'
  embedding_norm: bool = True
  causal: bool = False
  fuse_qkv: bool = True
  projections: tuple[tuple[str, str], ...] = ()
  products: tuple[tuple[str, str], ...] = ()
  hooks: tuple[tuple[str, str], ...] = ()
  nonlinear: tuple[tuple[str, str], ...] = ()
  use_pooler: bool = True
  tie_word_embeddings: bool = True
  pad_token_id: int = 0
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  model_type: str = 'bert'
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  def __post_init__(self):
    # Normalise lists (from JSON) to tuples so the config stays hashable.
    for name in ('num_heads', 'intermediate_size', 'attention_map', 'ffn_map'):
      value = getattr(self, name)
      if isinstance(value, list):
        object.__setattr__(self, name, tuple(value))
    for name in RULE_FIELDS:
      object.__setattr__(self, name, tuple(tuple(rule) for rule in getattr(self, name)))
    if self.head_dim is None:
      heads0 = self.num_heads if isinstance(self.num_heads, int) else max(self.num_heads)
      if heads0 <= 0 or self.hidden_size % heads0:
        raise ValueError(
            f'hidden_size={self.hidden_size} is not divisible by num_heads={heads0}; '
            'set head_dim explicitly')
      object.__setattr__(self, 'head_dim', self.hidden_size // heads0)
    self._validate()

  def _validate(self):
    errors = []
    for name in ('vocab_size', 'hidden_size', 'num_layers', 'max_position_embeddings',
                 'head_dim'):
      if getattr(self, name) <= 0:
        errors.append(f'{name} must be positive, got {getattr(self, name)}')
    for name in ('num_heads', 'intermediate_size'):
      value = getattr(self, name)
      values = (value,) if isinstance(value, int) else value
      if not isinstance(value, int) and len(values) != self.num_layers:
        errors.append(f'{name} has {len(values)} entries but num_layers={self.num_layers}')
      if any(v < 0 for v in values):
        errors.append(f'{name} must be >= 0, got {value}')
    for name, size in (('attention_map', self.heads), ('ffn_map', self.ffn)):
      mapping = getattr(self, name)
      if mapping is None:
        continue
      if len(mapping) != self.num_layers or any(not 0 <= j < self.num_layers
                                                for j in mapping):
        errors.append(f'{name} needs {self.num_layers} entries in 0..{self.num_layers - 1}, '
                      f'got {mapping}')
        continue
      for j in set(mapping):
        sizes = {size(i) for i in range(self.num_layers) if mapping[i] == j}
        if len(sizes) > 1:
          errors.append(f'{name}: layers sharing parameter set {j} have different sizes '
                        f'{sorted(sizes)}')
    if self.norm_position not in NORM_POSITIONS:
      errors.append(f'norm_position={self.norm_position!r} is not one of {NORM_POSITIONS}')
    for field in RULE_FIELDS:
      errors += check_rules(getattr(self, field), field)
    if self.embedding_size is not None and self.embedding_size <= 0:
      errors.append(f'embedding_size must be positive, got {self.embedding_size}')
    if self.type_vocab_size < 0:
      errors.append(f'type_vocab_size must be >= 0, got {self.type_vocab_size}')
    if self.position_offset < 0 or self.position_offset >= self.max_position_embeddings:
      errors.append(f'position_offset={self.position_offset} is outside the position table')
    if self.hidden_act not in ACTIVATIONS:
      errors.append(f'hidden_act={self.hidden_act!r} is not one of {ACTIVATIONS}')
    if self.model_type not in MODEL_TYPES:
      errors.append(f'model_type={self.model_type!r} is not one of {MODEL_TYPES}')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in DTYPES:
        errors.append(f'{name}={getattr(self, name)!r} is not one of {DTYPES}')
    for name in ('hidden_dropout', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        errors.append(f'{name} must be in [0, 1), got {getattr(self, name)}')
    if errors:
      raise ValueError('Invalid EncoderConfig: ' + '; '.join(errors))

  # -- per-layer sizes ------------------------------------------------------------
  def heads(self, layer: int) -> int:
    """Number of attention heads of `layer`."""
    return self.num_heads if isinstance(self.num_heads, int) else self.num_heads[layer]

  def ffn(self, layer: int) -> int:
    """FFN (intermediate) width of `layer`."""
    if isinstance(self.intermediate_size, int):
      return self.intermediate_size
    return self.intermediate_size[layer]

  def attention_set(self, layer: int) -> int:
    """The parameter set whose attention block application `layer` runs."""
    return layer if self.attention_map is None else self.attention_map[layer]

  def ffn_set(self, layer: int) -> int:
    """The parameter set whose FFN block application `layer` runs."""
    return layer if self.ffn_map is None else self.ffn_map[layer]

  @property
  def parameter_sets(self) -> int:
    """Number of `layer_<j>` parameter sets (num_layers unless layers are shared)."""
    used = {self.attention_set(i) for i in range(self.num_layers)}
    used |= {self.ffn_set(i) for i in range(self.num_layers)}
    return max(used) + 1

  def shared(self, groups: int = 1) -> 'EncoderConfig':
    """Whole layers shared: application i runs parameter set i * groups // num_layers."""
    mapping = tuple(i * groups // self.num_layers for i in range(self.num_layers))
    return self.replace(attention_map=mapping, ffn_map=mapping)

  @property
  def embed_size(self) -> int:
    """Width of the embedding tables."""
    return self.embedding_size or self.hidden_size

  @property
  def max_length(self) -> int:
    """Longest sequence the position table can encode."""
    return self.max_position_embeddings - self.position_offset

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  # -- (de)serialisation -----------------------------------------------------------
  def replace(self, **changes: Any) -> 'EncoderConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> 'EncoderConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f'Unknown EncoderConfig fields: {unknown}')
    return cls(**values)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)
