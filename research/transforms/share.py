"""Cross-layer parameter sharing (ALBERT) as a transform of a trained encoder.

    config, params = share(config, params)                        # one layer for all
    config, params = share(config, params, parts='attention')     # attention only
    config, params = share(config, params, groups=3, parts='ffn') # FFN shared by pairs of 6

Application i of the L layers runs parameter set g = i * groups // L for the shared
part ('all', 'attention' = attention + its LayerNorm, or 'ffn' = FFN + its LayerNorm),
through the encoder's sharing maps (`EncoderConfig.attention_map` / `ffn_map`). Each
shared set starts as the average of the layers it merges (Lan et al. 2020 trained
shared layers from scratch; averaging keeps what the layers have in common as the
starting point of the fine-tune that should follow). Layers must agree in size within
a group. The params are the encoder's, or a TaskModel's with an 'encoder' entry.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from research.models.config import EncoderConfig

PARTS = {'all': ('attention', 'attention_norm', 'mlp', 'output_norm'),
         'attention': ('attention', 'attention_norm'),
         'ffn': ('mlp', 'output_norm')}


def share(config: EncoderConfig, params: Mapping[str, Any], groups: int = 1,
          parts: str = 'all') -> tuple[EncoderConfig, dict]:
  """Shares `parts` of the layers in `groups` contiguous groups; returns (config, params)."""
  if parts not in PARTS:
    raise ValueError(f'parts must be one of {sorted(PARTS)}, got {parts!r}')
  layers = config.num_layers
  if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
    raise ValueError(f'groups must be an int in 1..{layers}, got {groups!r}')
  if not 1 <= groups <= layers:
    # 0 groups would share an empty set of layers; more than `layers` leaves groups empty.
    raise ValueError(f'groups must be in 1..{layers} (every group shares at least one '
                     f'layer), got {groups}')
  if config.attention_map is not None or config.ffn_map is not None:
    raise ValueError('the encoder already shares layers; share an unshared model')
  mapping = tuple(i * groups // layers for i in range(layers))
  new_config = config.replace(
      attention_map=mapping if parts in ('all', 'attention') else None,
      ffn_map=mapping if parts in ('all', 'ffn') else None)  # validates sizes per group
  task = 'encoder' in params
  encoder = dict(params['encoder'] if task else params)
  shared = PARTS[parts]
  missing = [f'layer_{i}' + ('' if f'layer_{i}' not in encoder else f'/{block}')
             for i in range(layers) for block in shared
             if f'layer_{i}' not in encoder or block not in encoder[f'layer_{i}']]
  if missing:
    raise ValueError(f'params lack {sorted(set(missing))[:5]}: share needs the encoder '
                     f"params of all {layers} layers (or a TaskModel's, with an 'encoder' "
                     'entry), each holding the shared parts')
  merged = {g: [i for i in range(layers) if mapping[i] == g] for g in range(groups)}
  out = {k: v for k, v in encoder.items() if not k.startswith('layer_')}
  for i in range(layers):
    own = {k: v for k, v in encoder[f'layer_{i}'].items() if k not in shared}
    if i < groups:  # set i also holds the shared blocks of group i
      for block in shared:
        members = [encoder[f'layer_{j}'][block] for j in merged[i]]
        own[block] = jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]),
                                                      0).astype(np.asarray(xs[0]).dtype),
                                  *members)
    if own:
      out[f'layer_{i}'] = own
  return new_config, ({**params, 'encoder': out} if task else out)
