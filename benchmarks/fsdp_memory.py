r"""Train-state bytes per device under FSDP: params, optimizer state and EMA, as the trainer
places them.

    python benchmarks/fsdp_memory.py                          # MiniLM-L6 shape, 4 devices
    python benchmarks/fsdp_memory.py --model bert-base-uncased --fsdp 8 --optimizer lamb

The model's architecture comes from its config (weights are initialised at random: only
the layout matters), params are placed by the logical-axis rules of
`research/train/sharding.py` on a ('data'=1, 'fsdp'=N) mesh, the state is built by
`research/train/step.init_state` and pinned as the trainer pins it. On a CPU host the N
devices are forced host devices (`--xla_force_host_platform_device_count`), so this
runs anywhere. Printed: total bytes of each part and the most any one device holds; with
FSDP working, each device holds about 1/N of the split tensors (the embedding tables and
every matrix with an 'embed' axis) instead of a whole copy. The last line is one JSON
object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='minilm-l6', help='alias, folder or Hub id (config only)')
  p.add_argument('--fsdp', type=int, default=4, help='devices the params are split over')
  p.add_argument('--optimizer', default='adamw', help="'adamw' or 'lamb'")
  p.add_argument('--ema', type=float, default=0.0, help='>0: keep an EMA copy, as ema_decay')
  args = p.parse_args(argv)
  if args.fsdp < 1:
    raise SystemExit(f'--fsdp must be >= 1, got {args.fsdp}')
  return args


def main(argv=None):
  args = parse_args(argv)
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_force_host_platform_device_count' not in flags:  # only matters for the CPU backend
    os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={args.fsdp}'
  import functools  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from research.checkpoints import hf_load, resolve  # pylint: disable=g-import-not-at-top
  from research.models.heads import TaskModel  # pylint: disable=g-import-not-at-top
  from research.objectives import Classification  # pylint: disable=g-import-not-at-top
  from research.train import sharding  # pylint: disable=g-import-not-at-top
  from research.train.optimizers import make_optimizer  # pylint: disable=g-import-not-at-top
  from research.train import averaging  # pylint: disable=g-import-not-at-top
  from research.train.defaults import trainer_defaults  # pylint: disable=g-import-not-at-top
  from research.train import train_state  # pylint: disable=g-import-not-at-top
  from research.train.step import init_state  # pylint: disable=g-import-not-at-top

  if len(jax.devices()) < args.fsdp:
    raise SystemExit(f'--fsdp {args.fsdp} needs that many devices; {jax.default_backend()} '
                     f'has {len(jax.devices())}')
  config, _ = hf_load.read_config(resolve(args.model))
  model = TaskModel(config, Classification(num_labels=2))
  ids = jnp.zeros((1, 8), jnp.int32)
  init = functools.partial(model.init, input_ids=ids, attention_mask=jnp.ones_like(ids))
  mesh = sharding.make_mesh(1, args.fsdp, jax.devices()[:args.fsdp])
  shardings = sharding.param_shardings(jax.eval_shape(init, jax.random.PRNGKey(0))['params'],
                                       mesh)
  params = jax.jit(lambda r: nn.meta.unbox(init(r)['params']),
                   out_shardings=shardings)(jax.random.PRNGKey(0))
  tx = make_optimizer({'name': args.optimizer, 'learning_rate': 1e-4, 'total_steps': 10})
  schema = trainer_defaults()
  schema.ema_decay = args.ema
  owned = {'ema': averaging.TECHNIQUE.state(schema)} if args.ema else {}
  state = init_state(params, tx, 0, owned=owned)
  state, _ = train_state.place(state, mesh)

  def per_device(tree) -> dict:
    held = {d: 0 for d in mesh.devices.flat}
    for leaf in jax.tree.leaves(tree):
      for shard in leaf.addressable_shards:
        held[shard.device] += shard.data.nbytes
    return held

  result = {'benchmark': 'fsdp_memory', 'model': str(args.model), 'fsdp': args.fsdp,
            'optimizer': args.optimizer, 'backend': jax.default_backend()}
  print(f'{args.model}: fsdp={args.fsdp} on {jax.default_backend()}, {args.optimizer}'
        + (f', EMA {args.ema}' if args.ema else ''))
  print(f'{"part":<10} {"total MB":>10} {"max per device MB":>18} {"share":>7}')
  for part in ('params', 'opt_state', 'ema'):
    if part not in state:
      continue
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(state[part]))
    most = max(per_device(state[part]).values())
    print(f'{part:<10} {total / 1e6:10.1f} {most / 1e6:18.1f} {most / total:7.3f}')
    result[f'{part}_total_mb'] = total / 1e6
    result[f'{part}_max_device_mb'] = most / 1e6
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()
