"""Small random parameter trees shaped like `TaskModel`'s, for tests of param transforms.

Freezing rules, optimizer masks, LLRD depths and LoRA act on parameter *paths*; these
trees carry the same paths as a real encoder + head without building a model.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def bert_like_params(num_layers: int = 2, hidden: int = 8, vocab: int = 40, ffn: int = 16,
                     positions: int = 16, num_labels: int = 3,
                     attention: Sequence[str] = ('query', 'key', 'value', 'out'),
                     head_dense: bool = True, seed: int = 0) -> dict:
  """Returns {'encoder', 'layer_mix', 'head'} with float32 N(0, 1) weights.

  Norm scales are ones and norm biases zeros, as after initialisation. `attention`
  names the projections each layer holds; fewer leaves compile faster under jit.
  """
  rng = np.random.default_rng(seed)
  arr = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  dense = lambda i, o: {'kernel': arr(i, o), 'bias': arr(o)}
  norm = lambda: {'scale': jnp.ones(hidden), 'bias': jnp.zeros(hidden)}
  encoder = {'embeddings': {'word_embeddings': {'embedding': arr(vocab, hidden)},
                            'position_embeddings': {'embedding': arr(positions, hidden)},
                            'token_type_embeddings': {'embedding': arr(2, hidden)},
                            'layer_norm': norm()}}
  for i in range(num_layers):
    encoder[f'layer_{i}'] = {
        'attention': {name: dense(hidden, hidden) for name in attention},
        'attention_norm': norm(),
        'mlp': {'intermediate': dense(hidden, ffn), 'output': dense(ffn, hidden)},
        'output_norm': norm()}
  encoder['pooler'] = dense(hidden, hidden)
  head = {'dense': dense(hidden, hidden)} if head_dense else {}
  head['out'] = dense(hidden, num_labels)
  return {'encoder': encoder,
          'layer_mix': {'weights': jnp.zeros(num_layers + 1), 'gamma': jnp.ones(())},
          'head': head}
