"""Which layer of a frozen encoder carries the task? Linear probes per layer + ELMo mix.

    result = run(defaults(), 'runs/layer_probe')

The encoder is frozen. Train (or its first `train_examples` sentences) and dev are
encoded once with the jitted encoder into pooled features [N, L+1, hidden], one vector
per hidden state 0..L (`research.evaluate.features`; `cache_dir` keeps them between
runs). On those features one optax run trains L+1 linear probes, one per layer, and one
probe on the ELMo scalar mix (`research.train.probes`).

Pooling is linear (a masked average or a selection), so the scalar mix of the pooled
per-layer features equals the pooled scalar mix of the token-level hidden states:
    pool(sum_j s_j h_j) = sum_j s_j pool(h_j).
Training on cached pooled features is therefore exactly the ELMo mix of a frozen
encoder followed by pooling and a linear head (the mix without per-layer layer norm,
i.e. layer_mix='scalar_mix'). Writes results.md, results.json and layer_probe.png to `out`.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections
import numpy as np

from research.checkpoints import load_pretrained, load_tokenizer
from research.data import sources, tasks, tokenize
from research.data.sources import default_data_dir
from research.evaluate import features, plots, speed
from research.runs import study
from research.train import probes


def defaults(task: str = 'sst2', model: str = 'minilm-l6', pooling: str = 'mean'
             ) -> ml_collections.ConfigDict:
  """The study's settings (experiments/configs/layer_probe.py: variants, measured numbers)."""
  c = ml_collections.ConfigDict()
  c.model = model        # 'minilm-l6', a checkpoint folder or a Hub id
  c.task = task          # a single-label classification task
  c.data_dir = default_data_dir('glue')  # '' = TFDS
  c.train_examples = 0        # 0 = all (SST-2: 67,349)
  c.eval_examples = 0         # 0 = all dev (SST-2: 872)
  c.max_length = 64           # SST-2 sentences fit in 64 tokens (the longest dev one: 66)
  # all-MiniLM-L6-v2 was trained for mean-pooled sentence embeddings; 'cls' = first token.
  c.pooling = pooling
  # Encoding: length-sorted batches of this many rows, lengths padded to a multiple of
  # pad_multiple (one compiled shape per padded length).
  c.encode_batch_size = 128
  c.pad_multiple = 4
  c.cache_dir = ''            # keep encoded features here (.npz); '' = no cache
  # Probes: one AdamW run for all of them (see research/train/probes.py).
  c.epochs = 10
  c.batch_size = 256
  c.lr = 1e-3                 # AdamW lr of the linear probes
  c.mix_lr = 1e-2             # Adam lr of the mix weights and gamma
  c.weight_decay = 1e-2       # decoupled weight decay on the probe kernels
  c.seed = 0
  return c


def split_features(config, split: str, fn, params, tokenizer,
                   spec) -> tuple[np.ndarray, np.ndarray]:
  """Pooled features [N, L+1, hidden] and labels [N] of one split (cached if asked)."""
  limit = config.train_examples if split == 'train' else config.eval_examples
  path = None
  if config.cache_dir:
    path = features.cache_path(config.cache_dir, model=config.model, task=config.task,
                               split=split, num_examples=limit,
                               max_length=config.max_length, pooling=config.pooling)

  def compute():
    examples = sources.load_examples(spec, split, config.data_dir or None)
    examples = examples[:limit] if limit else examples
    encoded = tokenize.encode(spec, examples, tokenizer, config.max_length).features
    x = features.encode(fn, params, encoded, batch_size=config.encode_batch_size,
                        max_length=config.max_length, pad_multiple=config.pad_multiple,
                        pad_id=tokenizer.pad_token_id or 0, name=split)
    return {'features': x, 'labels': np.array([f['labels'] for f in encoded], np.int32)}

  arrays = features.cached(path, compute, keys=('features', 'labels'))
  return arrays['features'], arrays['labels']


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


# -- Run ------------------------------------------------------------------------------

def run(config, out: str, command: str = '') -> dict[str, Any]:
  """Encodes, trains the probes, writes results.md/.json and the plot to `out`
  (created) with `command` recorded; returns the results with the table and summary."""
  spec = tasks.get_task(config.task)
  if spec.kind != 'classification':
    raise ValueError(f'layer_probe needs a classification task, {config.task!r} is '
                     f'{spec.kind}')
  os.makedirs(out, exist_ok=True)

  encoder_config, params = load_pretrained(config.model)
  tokenizer = load_tokenizer(config.model)
  fn = features.make_feature_fn(encoder_config, config.pooling)
  (x_train, y_train, x_dev, y_dev), encode_seconds = speed.timed_call(lambda: (
      *split_features(config, 'train', fn, params, tokenizer, spec),
      *split_features(config, 'validation', fn, params, tokenizer, spec)))
  logging.info('features: train %s, dev %s (%.0f s)', x_train.shape, x_dev.shape,
               encode_seconds)

  (trained, history), probe_seconds = speed.timed_call(lambda: probes.train_probes(
      x_train, y_train, len(spec.label_names), epochs=config.epochs,
      batch_size=config.batch_size, lr=config.lr, mix_lr=config.mix_lr,
      weight_decay=config.weight_decay, seed=config.seed))
  dev_layers, dev_mix = probes.accuracies(trained, x_dev, y_dev)
  train_layers, train_mix = probes.accuracies(trained, x_train, y_train)

  result = {
      'config': {**config.to_dict(), 'out': out,
                 'num_layers': encoder_config.num_layers,
                 'hidden_size': encoder_config.hidden_size,
                 'train_size': len(x_train), 'dev_size': len(x_dev)},
      'layers': [{'layer': i, 'dev_accuracy': float(d), 'train_accuracy': float(t)}
                 for i, (d, t) in enumerate(zip(dev_layers, train_layers))],
      'mix': {'dev_accuracy': float(dev_mix), 'train_accuracy': float(train_mix),
              'weights': [float(w) for w in probes.mix_weights(trained)],
              'gamma': float(trained['mix']['gamma'])},
      'best_layer': int(np.argmax(dev_layers)),
      'train_loss_per_epoch': history,
      'encode_seconds': encode_seconds, 'probe_seconds': probe_seconds,
      'command': command,
  }
  title = f'Layer probe: {config.task}, frozen {config.model}, {config.pooling} pooling'
  details = (f'{len(x_train)} train / {len(x_dev)} dev sentences, max_length '
             f'{config.max_length}, {config.epochs} epochs, seed {config.seed}. Encoding '
             f'{encode_seconds:.0f} s, probes {probe_seconds:.0f} s.\n\n')
  result['plot'] = plots.layer_probe(result, os.path.join(out, 'layer_probe.png'))
  return study.write_results(out, title, details + markdown_table(result), result, {
      'benchmark': 'layer_probe', 'task': config.task, 'model': config.model,
      'dev_accuracy_per_layer': [r['dev_accuracy'] for r in result['layers']],
      'mix_dev_accuracy': result['mix']['dev_accuracy'], 'best_layer': result['best_layer']})
