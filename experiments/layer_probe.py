r"""Which layer of a frozen encoder carries the task? Linear probes per layer + ELMo mix.

    # full SST-2 train set (67,349 sentences), bundled MiniLM-L6, mean pooling:
    python -m experiments.layer_probe --out runs/layer_probe
    # tiny CPU smoke run (256 train / 128 dev sentences, seconds):
    python -m experiments.layer_probe --runlocal --out /tmp/layer_probe

The encoder is frozen. Train (or its first --train_examples sentences) and dev are
encoded once with the jitted encoder; for every hidden state 0..L (0 = embedding
output, L = top layer) the tokens are pooled into one vector ('mean' over real
tokens by default, since all-MiniLM-L6-v2 was trained for mean-pooled sentence
embeddings; or 'cls', the first token), giving cached features [N, L+1, hidden].

On those features we train, with one optax AdamW run and one seed:
  * L+1 independent linear probes (softmax regression), one per layer;
  * one probe on the ELMo scalar mix ``gamma * sum_j softmax(w)_j h_j``
    (`research.transforms.layer_mix.scalar_mix`), with w, gamma and the probe
    trained jointly.
Pooling is linear (a masked average or a selection), so the scalar mix of the pooled
per-layer features equals the pooled scalar mix of the token-level hidden states:
    pool(sum_j s_j h_j) = sum_j s_j pool(h_j).
Training on cached pooled features is therefore exactly the ELMo mix of a frozen
encoder followed by pooling and a linear head (the mix without per-layer layer norm,
i.e. layer_mix='scalar_mix').

All probes are trained in one loop on a summed loss. Their parameters are disjoint and
AdamW is per-coordinate (no global-norm clipping here), so this gives the same
updates as training each probe on its own with the same minibatch order.

Writes to --out: results.md (table), results.json (numbers, learned mix weights,
timings, flags) and layer_probe.png (dev accuracy per layer, the mix as a line, and the
learned mix weights). --cache_dir keeps the encoded features between runs.

Measured (bundled MiniLM-L6, all 67,349 train sentences, max_length 64, mean pooling,
defaults: 10 epochs, batch 256, lr 1e-3, seed 0; 2 shared CPU cores, encoding ~11 min):
dev accuracy by layer 0..6 = 77.5 77.4 78.6 79.9 80.6 79.5 80.7, scalar mix 80.5
(weights peak on layers 4 and 6). Dev has 872 sentences, so +-1.4 points is one
standard error: layers 3..6 and the mix are a tie.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs import common
from research.checkpoints import load_pretrained, load_tokenizer
from research.data import sources, tasks, tokenize
from research.models.encoder import Encoder, mean_pool
from research.transforms.layer_mix import scalar_mix

POOLINGS = ('mean', 'cls')


# -- Encoding: pooled features of every layer, once ------------------------------------

def make_feature_fn(config, pooling: str):
  """Returns jitted ``fn(params, ids, mask, types) -> [batch, L+1, hidden]`` float32."""
  if pooling not in POOLINGS:
    raise ValueError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
  encoder = Encoder(config)

  @jax.jit
  def fn(params, ids, mask, types):
    _, inter = encoder.apply({'params': params}, ids, mask, types)
    if pooling == 'mean':
      pooled = [mean_pool(h, mask) for h in inter['hidden_states']]
    else:
      pooled = [h[:, 0] for h in inter['hidden_states']]
    return jnp.stack(pooled, axis=1).astype(jnp.float32)
  return fn


def length_batches(lengths: np.ndarray, max_length: int, pad_multiple: int,
                   tokens_per_batch: int) -> list[tuple[np.ndarray, int, int]]:
  """Groups examples of similar length: ``[(indices, pad_to, rows), ...]``.

  Examples are sorted by length and grouped by their length rounded up to
  ``pad_multiple``; each group is cut into batches of ``rows`` examples (about
  ``tokens_per_batch`` tokens, fewer for a small group), so every group compiles one
  shape ``[rows, pad_to]`` and the last batch of a group is padded with dummy rows.
  """
  pad_to = np.minimum(-(-lengths // pad_multiple) * pad_multiple, max_length)
  out = []
  for t in np.unique(pad_to):
    idx = np.flatnonzero(pad_to == t)
    rows = max(8, tokens_per_batch // int(t))
    rows = min(rows, -(-len(idx) // 8) * 8)
    out += [(idx[i:i + rows], int(t), rows) for i in range(0, len(idx), rows)]
  return out


def encode_features(fn, params, features: Sequence[dict], max_length: int,
                    pad_multiple: int, tokens_per_batch: int, pad_id: int = 0,
                    name: str = '') -> np.ndarray:
  """Runs ``fn`` over all features in length-sorted batches; returns [N, L+1, hidden]."""
  lengths = np.array([len(f['input_ids']) for f in features])
  plan = length_batches(lengths, max_length, pad_multiple, tokens_per_batch)
  out = None
  start, done, next_report = time.perf_counter(), 0, 0.1
  for idx, pad_to, rows in plan:
    ids = np.full((rows, pad_to), pad_id, np.int32)
    mask = np.zeros((rows, pad_to), np.int32)
    types = np.zeros((rows, pad_to), np.int32)
    mask[len(idx):, 0] = 1  # dummy rows: one token, so they stay finite
    for row, i in enumerate(idx):
      n = lengths[i]
      ids[row, :n] = features[i]['input_ids']
      types[row, :n] = features[i]['token_type_ids']
      mask[row, :n] = 1
    pooled = np.asarray(fn(params, ids, mask, types))[:len(idx)]
    if out is None:
      out = np.zeros((len(features),) + pooled.shape[1:], np.float32)
    out[idx] = pooled
    done += len(idx)
    if done / len(features) >= next_report or done == len(features):
      seconds = time.perf_counter() - start
      logging.info('encoded %s %d/%d (%.0f%%) in %.0f s', name, done, len(features),
                   100 * done / len(features), seconds)
      next_report += 0.1
  return out


def cached_features(args, split: str, fn, params, tokenizer, spec) -> tuple[np.ndarray,
                                                                               np.ndarray]:
  """Pooled features and labels of one split, from --cache_dir if present there."""
  limit = args.train_examples if split == 'train' else args.eval_examples
  path = None
  if args.cache_dir:
    os.makedirs(args.cache_dir, exist_ok=True)
    path = os.path.join(args.cache_dir, f'{args.model.replace("/", "_")}_{split}_n{limit}'
                        f'_len{args.max_length}_{args.pooling}.npz')
    if os.path.exists(path):
      logging.info('loading cached features %s', path)
      with np.load(path) as data:
        return data['features'], data['labels']
  examples = sources.load_examples(spec, split, args.data_dir or None)
  examples = examples[:limit] if limit else examples
  features = tokenize.encode(spec, examples, tokenizer, args.max_length).features
  x = encode_features(fn, params, features, args.max_length, args.pad_multiple,
                      args.tokens_per_batch, tokenizer.pad_token_id or 0, split)
  y = np.array([f['labels'] for f in features], np.int32)
  if path:
    np.savez(path, features=x, labels=y)
  return x, y


# -- Probes: L+1 linear probes and the scalar-mix probe, trained together -------------

def init_probes(num_states: int, hidden: int, num_classes: int) -> dict:
  """Zero-initialised probes; mix weights 0 (uniform softmax) and gamma 1."""
  return {
      'layers': {'w': jnp.zeros((num_states, hidden, num_classes)),
                 'b': jnp.zeros((num_states, num_classes))},
      'mix': {'weights': jnp.zeros((num_states,)), 'gamma': jnp.ones(()),
              'w': jnp.zeros((hidden, num_classes)), 'b': jnp.zeros((num_classes,))},
  }


def probe_logits(params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-layer logits [b, L+1, C] and scalar-mix logits [b, C] for features [b, L+1, h]."""
  layers = jnp.einsum('blh,lhc->blc', x, params['layers']['w']) + params['layers']['b']
  mix = params['mix']
  mixed = scalar_mix(mix['weights'], mix['gamma'],
                     tuple(x[:, j] for j in range(x.shape[1])))
  return layers, mixed @ mix['w'] + mix['b']


def make_optimizer(lr: float, mix_lr: float, weight_decay: float,
                   params: dict) -> optax.GradientTransformation:
  """AdamW on the probes (decay on the kernels 'w' only); Adam on the mix scalars."""
  labels = {'layers': {'w': 'probe', 'b': 'probe'},
            'mix': {'weights': 'mix', 'gamma': 'mix', 'w': 'probe', 'b': 'probe'}}
  decay = jax.tree_util.tree_map_with_path(
      lambda kp, _: getattr(kp[-1], 'key', None) == 'w', params)
  return optax.multi_transform(
      {'probe': optax.adamw(lr, weight_decay=weight_decay, mask=decay),
       'mix': optax.adam(mix_lr)}, labels)


def train_probes(x: np.ndarray, y: np.ndarray, num_classes: int, epochs: int,
                 batch_size: int, lr: float, mix_lr: float, weight_decay: float,
                 seed: int) -> tuple[dict, list[float]]:
  """Trains all probes with minibatch AdamW; returns params and the mean loss per epoch."""
  n = len(x)
  batch_size = min(batch_size, n)
  steps = n // batch_size
  params = init_probes(x.shape[1], x.shape[2], num_classes)
  tx = make_optimizer(lr, mix_lr, weight_decay, params)
  opt_state = tx.init(params)

  def loss_fn(params, xb, yb):
    layers, mix = probe_logits(params, xb)
    per_layer = optax.softmax_cross_entropy_with_integer_labels(
        layers, yb[:, None]).mean(0)                    # [L+1]
    mix_loss = optax.softmax_cross_entropy_with_integer_labels(mix, yb).mean()
    return per_layer.sum() + mix_loss, (per_layer, mix_loss)

  @jax.jit
  def epoch(params, opt_state, x, y, order):
    def step(carry, idx):
      params, opt_state = carry
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x[idx], y[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
    return params, opt_state, losses.mean()

  x, y = jnp.asarray(x), jnp.asarray(y)
  rng = np.random.default_rng(seed)
  history = []
  for e in range(epochs):
    order = rng.permutation(n)[:steps * batch_size].reshape(steps, batch_size)
    params, opt_state, loss = epoch(params, opt_state, x, y, jnp.asarray(order))
    history.append(float(loss))
    logging.info('probe epoch %d/%d: summed train loss %.4f', e + 1, epochs, history[-1])
  return params, history


def accuracies(params: dict, x: np.ndarray, y: np.ndarray,
               batch_size: int = 4096) -> tuple[np.ndarray, float]:
  """Accuracy in percent of every layer probe [L+1] and of the mix probe."""
  predict = jax.jit(lambda p, xb: tuple(jnp.argmax(l, -1) for l in probe_logits(p, xb)))
  layer_hits, mix_hits = 0, 0
  for i in range(0, len(x), batch_size):
    layers, mix = predict(params, jnp.asarray(x[i:i + batch_size]))
    yb = y[i:i + batch_size]
    layer_hits = layer_hits + (np.asarray(layers) == yb[:, None]).sum(0)
    mix_hits += int((np.asarray(mix) == yb).sum())
  return 100.0 * np.asarray(layer_hits) / len(y), 100.0 * mix_hits / len(y)


# -- Reporting ------------------------------------------------------------------------

def markdown_table(result: dict) -> str:
  lines = ['| features | dev accuracy (%) | train accuracy (%) |', '|---|---:|---:|']
  for row in result['layers']:
    name = 'layer 0 (embeddings)' if row['layer'] == 0 else f'layer {row["layer"]}'
    lines.append(f'| {name} | {row["dev_accuracy"]:.2f} | {row["train_accuracy"]:.2f} |')
  mix = result['mix']
  lines.append(f'| scalar mix | {mix["dev_accuracy"]:.2f} | {mix["train_accuracy"]:.2f} |')
  weights = ', '.join(f'{w:.3f}' for w in mix['weights'])
  lines += ['', f'Learned mix weights softmax(w), layers 0..L: [{weights}]; '
            f'gamma = {mix["gamma"]:.3f}']
  return '\n'.join(lines) + '\n'


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  layers = [r['layer'] for r in result['layers']]
  acc = [r['dev_accuracy'] for r in result['layers']]
  mix = result['mix']
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  ax1.bar(layers, acc, color='tab:blue', label='linear probe on layer')
  ax1.axhline(mix['dev_accuracy'], color='tab:red', linestyle='--',
              label=f'scalar mix ({mix["dev_accuracy"]:.1f})')
  low = min(acc + [mix['dev_accuracy']])
  ax1.set_ylim(max(0.0, low - 5), min(100.0, max(acc + [mix['dev_accuracy']]) + 3))
  for x, a in zip(layers, acc):
    ax1.text(x, a + 0.2, f'{a:.1f}', ha='center', fontsize=8)
  ax1.set_xticks(layers)
  ax1.set_xlabel('layer (0 = embeddings)')
  ax1.set_ylabel('dev accuracy (%)')
  cfg = result['config']
  ax1.set_title(f'{cfg["task"]} linear probes, frozen {cfg["model"]} ({cfg["pooling"]})')
  ax1.legend(loc='lower right', fontsize=8)
  ax2.bar(layers, mix['weights'], color='tab:red')
  ax2.axhline(1.0 / len(layers), color='gray', linestyle=':', label='uniform')
  ax2.set_xticks(layers)
  ax2.set_xlabel('layer (0 = embeddings)')
  ax2.set_ylabel('softmax weight')
  ax2.set_title(f'learned scalar-mix weights (gamma {mix["gamma"]:.2f})')
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# -- Main -----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='minilm-l6', help="'minilm-l6', a folder or a Hub id")
  p.add_argument('--task', default='sst2', help='a single-label classification task')
  p.add_argument('--train_examples', type=int, default=0, help='0 = all (67,349)')
  p.add_argument('--eval_examples', type=int, default=0, help='0 = all dev (872)')
  p.add_argument('--max_length', type=int, default=64)
  p.add_argument('--pooling', choices=POOLINGS, default='mean')
  p.add_argument('--epochs', type=int, default=10)
  p.add_argument('--batch_size', type=int, default=256)
  p.add_argument('--lr', type=float, default=1e-3, help='AdamW lr of the linear probes')
  p.add_argument('--mix_lr', type=float, default=1e-2, help='Adam lr of mix weights/gamma')
  p.add_argument('--weight_decay', type=float, default=1e-2,
                 help='decoupled weight decay on probe kernels')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--pad_multiple', type=int, default=None,
                 help='encoding pads lengths to a multiple of this (default 4; 16 runlocal)')
  p.add_argument('--tokens_per_batch', type=int, default=8192)
  p.add_argument('--data_dir', default=None,
                 help='GLUE folder (default: $RESEARCH_DATA_DIR or ../shared/data/glue)')
  p.add_argument('--cache_dir', default='', help='keep encoded features here (npz)')
  p.add_argument('--out', default='runs/layer_probe')
  p.add_argument('--runlocal', action='store_true',
                 help='tiny smoke run: 256 train / 128 dev, max_length 32, 3 epochs')
  args = p.parse_args(argv)
  if args.runlocal:
    args.train_examples = args.train_examples or 256
    args.eval_examples = args.eval_examples or 128
    args.max_length = min(args.max_length, 32)
    args.epochs = min(args.epochs, 3)
    args.batch_size = min(args.batch_size, 64)
    args.pad_multiple = args.pad_multiple or 16
  args.pad_multiple = args.pad_multiple or 4
  if args.data_dir is None:
    args.data_dir = common.default_data_dir('glue')
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', force=True)
  spec = tasks.get_task(args.task)
  if spec.kind != 'classification':
    raise ValueError(f'layer_probe needs a classification task, {args.task!r} is {spec.kind}')
  os.makedirs(args.out, exist_ok=True)

  config, params = load_pretrained(args.model)
  tokenizer = load_tokenizer(args.model)
  fn = make_feature_fn(config, args.pooling)
  t0 = time.perf_counter()
  x_train, y_train = cached_features(args, 'train', fn, params, tokenizer, spec)
  x_dev, y_dev = cached_features(args, 'validation', fn, params, tokenizer, spec)
  encode_seconds = time.perf_counter() - t0
  logging.info('features: train %s, dev %s (%.0f s)', x_train.shape, x_dev.shape,
               encode_seconds)

  t0 = time.perf_counter()
  num_classes = len(spec.label_names)
  probes, history = train_probes(x_train, y_train, num_classes, args.epochs,
                                 args.batch_size, args.lr, args.mix_lr,
                                 args.weight_decay, args.seed)
  probe_seconds = time.perf_counter() - t0
  dev_layers, dev_mix = accuracies(probes, x_dev, y_dev)
  train_layers, train_mix = accuracies(probes, x_train, y_train)
  weights = np.asarray(jax.nn.softmax(probes['mix']['weights']))

  result = {
      'config': {**vars(args), 'num_layers': config.num_layers,
                 'hidden_size': config.hidden_size,
                 'train_size': len(x_train), 'dev_size': len(x_dev)},
      'layers': [{'layer': i, 'dev_accuracy': float(d), 'train_accuracy': float(t)}
                 for i, (d, t) in enumerate(zip(dev_layers, train_layers))],
      'mix': {'dev_accuracy': float(dev_mix), 'train_accuracy': float(train_mix),
              'weights': [float(w) for w in weights],
              'gamma': float(probes['mix']['gamma'])},
      'best_layer': int(np.argmax(dev_layers)),
      'train_loss_per_epoch': history,
      'encode_seconds': encode_seconds, 'probe_seconds': probe_seconds,
      'command': 'python -m experiments.layer_probe ' + ' '.join(
          sys.argv[1:] if argv is None else argv),
  }
  table = markdown_table(result)
  header = (f'# Layer probe: {args.task}, frozen {args.model}, {args.pooling} pooling\n\n'
            f'{len(x_train)} train / {len(x_dev)} dev sentences, max_length '
            f'{args.max_length}, {args.epochs} epochs, seed {args.seed}. Encoding '
            f'{encode_seconds:.0f} s, probes {probe_seconds:.0f} s.\n\n')
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(header + table)
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(result, f, indent=2)
  plot(result, os.path.join(args.out, 'layer_probe.png'))
  print(header + table)
  return result


if __name__ == '__main__':
  main()
