"""research/train/sharding.py: optimizer state, EMA and pruning masks follow the params'
shardings (FSDP splits them too), on one device and on four forced host devices."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from research.train import sharding
from research.train.step import init_like_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _placed(mesh):
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  return {'layer': {'kernel': put(np.ones((4, 2), np.float32), P(None, 'fsdp')),
                    'bias': put(np.ones((2,), np.float32), P())},
          'out': {'kernel': put(np.ones((2, 3), np.float32), P('fsdp', None))}}


def test_state_leaves_follow_the_param_of_the_same_path_and_shape():
  mesh = sharding.make_mesh(1, 1)  # axes of size 1: specs are kept, on one device
  params = _placed(mesh)
  state = jax.eval_shape(optax.adamw(1e-3).init, params)
  got = sharding.mirrored_shardings(state, params)
  assert got[0].count.spec == P()  # a step count mirrors no parameter
  for moments in (got[0].mu, got[0].nu):
    assert moments['layer']['kernel'].spec == P(None, 'fsdp')
    assert moments['out']['kernel'].spec == P('fsdp', None)
    assert moments['layer']['bias'].spec == P()
  # Same path tail but another shape (a factored statistic): replicated.
  other = {'stats': {'layer': {'kernel': jax.ShapeDtypeStruct((4,), jnp.float32)}}}
  assert sharding.mirrored_shardings(other, params)['stats']['layer']['kernel'].spec == P()


def test_without_named_shardings_nothing_is_imposed():
  params = {'w': jnp.ones((2, 2))}
  assert sharding.mirrored_shardings(jax.eval_shape(optax.adam(1e-3).init, params),
                                     params) is None
  state = init_like_params(optax.adam(1e-3).init, params)  # plain jit, as before
  np.testing.assert_array_equal(state[0].mu['w'], np.zeros((2, 2)))


_FOUR_DEVICES = textwrap.dedent('''
    import functools
    import flax.linen as nn, jax, jax.numpy as jnp, optax
    from research.models.config import EncoderConfig
    from research.models.heads import TaskModel
    from research.objectives import Classification
    from research.train import sharding
    from research.train import averaging
    from research.train.step import init_state
    from research.train.defaults import trainer_defaults
    from research.transforms import freeze, sparsity

    config = EncoderConfig(vocab_size=128, hidden_size=32, num_layers=1, num_heads=2,
                           intermediate_size=64, max_position_embeddings=64)
    model = TaskModel(config, Classification(num_labels=2))
    ids = jnp.zeros((1, 8), jnp.int32)
    init = functools.partial(model.init, input_ids=ids, attention_mask=jnp.ones_like(ids))
    mesh = sharding.make_mesh(1, 4)
    shardings = sharding.param_shardings(jax.eval_shape(init, jax.random.PRNGKey(0))['params'],
                                         mesh)
    params = jax.jit(lambda r: nn.meta.unbox(init(r)['params']),
                     out_shardings=shardings)(jax.random.PRNGKey(0))
    tx = sparsity.with_pruning(optax.adamw(1e-3), sparsity.polynomial_schedule(0, 0.5, 0, 10),
                               begin_step=0, end_step=10)
    tx = freeze.with_freezing(tx, params, freeze.preset('frozen_embeddings'))
    ema = trainer_defaults()
    ema.ema_decay = 0.9
    state = init_state(params, tx, 0, owned={'ema': averaging.TECHNIQUE.state(ema)})
    by_path = {sharding._names(p): (x.shape, x.sharding.spec)
               for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    checked = split = 0
    for part in ('opt_state', 'ema'):
      for path, leaf in jax.tree_util.tree_flatten_with_path(state[part])[0]:
        assert isinstance(leaf.sharding, jax.sharding.NamedSharding), (part, path)
        names = sharding._names(path)
        for n in range(len(names), 0, -1):
          if names[-n:] in by_path and by_path[names[-n:]][0] == leaf.shape:
            assert leaf.sharding.spec == by_path[names[-n:]][1], (part, path)
            checked += 1
            split += 'fsdp' in str(leaf.sharding.spec)
            break
    n_params = len(by_path)
    n_split = sum('fsdp' in str(spec) for _, spec in by_path.values())
    # EMA mirrors every param; Adam's mu and nu every trainable one; masks the pruned ones.
    assert checked > 2 * n_params and split > 2 * n_split, (checked, split, n_params, n_split)
    print('ok', checked, split)
''')


def test_fsdp_splits_optimizer_state_ema_and_masks_like_the_params():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'PYTHONPATH': ROOT}
  proc = subprocess.run([sys.executable, '-c', _FOUR_DEVICES], env=env, capture_output=True,
                        text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith('ok')
