"""Parameter EMA: warm-up schedule, update formula, dtypes, bad decay."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from research.train import averaging


def test_decay_warms_up_then_holds():
  np.testing.assert_allclose(averaging.decay_at(0, 0.999), 0.1)
  np.testing.assert_allclose(averaging.decay_at(8, 0.999), 0.5)
  np.testing.assert_allclose(averaging.decay_at(100_000, 0.999), 0.999)


def test_update_is_the_moving_average_in_float32():
  params = {'w': jnp.array([1.0, 2.0], jnp.bfloat16), 'b': jnp.array([4.0])}
  ema = averaging.init(params)
  assert ema['w'].dtype == jnp.float32
  new = {'w': jnp.array([3.0, 6.0], jnp.bfloat16), 'b': jnp.array([0.0])}
  out = averaging.update(ema, new, step=8, decay=0.9)  # d = min(0.9, 9 / 18) = 0.5
  np.testing.assert_allclose(out['w'], [2.0, 4.0])
  np.testing.assert_allclose(out['b'], [2.0])
  cast = averaging.as_params(out, new)
  assert cast['w'].dtype == jnp.bfloat16 and cast['b'].dtype == jnp.float32


@pytest.mark.parametrize('decay', [0.0, 1.0, -0.5])
def test_bad_decay_is_named(decay):
  with pytest.raises(ValueError, match='EMA decay'):
    averaging.update({'w': jnp.zeros(1)}, {'w': jnp.zeros(1)}, 0, decay)
