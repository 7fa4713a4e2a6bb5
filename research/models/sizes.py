"""Sizes of a params tree: scalars and bytes (the one parameter counter).

    >>> count_params({'w': np.zeros((2, 3)), 'b': np.zeros(3)})
    9
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np


def count_params(tree: Any) -> int:
  """Number of scalars in the array leaves (arrays, or `jax.ShapeDtypeStruct`s)."""
  return int(sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree)))


def param_bytes(tree: Any) -> int:
  """Bytes of the array leaves as stored (int8 kernels count 1 byte a value)."""
  return int(sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree) if hasattr(x, 'dtype')))
