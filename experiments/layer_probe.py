r"""Which layer of a frozen encoder carries the task? Linear probes per layer + ELMo mix.

    python -m experiments.layer_probe --config experiments/configs/layer_probe.py \
        --out runs/layer_probe
    python -m experiments.layer_probe --config experiments/configs/layer_probe.py:runlocal \
        --out /tmp/layer_probe

The config (experiments/configs/layer_probe.py) holds the settings, the variants and
the measured numbers; fields can be overridden with --config.<field>=<value>.

The encoder is frozen. Train (or its first `train_examples` sentences) and dev are
encoded once with the jitted encoder into pooled features [N, L+1, hidden], one vector
per hidden state 0..L (`research.evaluate.features`; `cache_dir` keeps them between
runs). On those features one optax run trains L+1 linear probes, one per layer, and
one probe on the ELMo scalar mix (`research.train.probes`).

Pooling is linear (a masked average or a selection), so the scalar mix of the pooled
per-layer features equals the pooled scalar mix of the token-level hidden states:
    pool(sum_j s_j h_j) = sum_j s_j pool(h_j).
Training on cached pooled features is therefore exactly the ELMo mix of a frozen
encoder followed by pooling and a linear head (the mix without per-layer layer norm,
i.e. layer_mix='scalar_mix').

Writes to --out: results.md (table), results.json (numbers, learned mix weights,
timings, config) and layer_probe.png (dev accuracy per layer, the mix as a line, and
the learned mix weights).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from research.checkpoints import load_pretrained, load_tokenizer
from research.data import sources, tasks, tokenize
from research.evaluate import features
from research.train import probes


def _define_flags():
  # Defined when run as a script only, so importing this module (tests, notebooks) does
  # not clash with other scripts' --config / --out.
  config_flags.DEFINE_config_file('config', None, 'experiments/configs/layer_probe.py[:args]')
  flags.DEFINE_string('out', 'runs/layer_probe', 'Folder for results.md/.json and the plot.')
  flags.mark_flags_as_required(['config'])


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


# -- Run ------------------------------------------------------------------------------

def run(config, out: str, command: str = '') -> dict[str, Any]:
  """Encodes, trains the probes, writes results.md/.json and the plot to `out`.

  Args:
    config: from experiments/configs/layer_probe.py.
    out: output folder (created).
    command: the command line, recorded in results.json.
  Returns:
    The dict written to results.json.
  """
  spec = tasks.get_task(config.task)
  if spec.kind != 'classification':
    raise ValueError(f'layer_probe needs a classification task, {config.task!r} is '
                     f'{spec.kind}')
  os.makedirs(out, exist_ok=True)

  encoder_config, params = load_pretrained(config.model)
  tokenizer = load_tokenizer(config.model)
  fn = features.make_feature_fn(encoder_config, config.pooling)
  t0 = time.perf_counter()
  x_train, y_train = split_features(config, 'train', fn, params, tokenizer, spec)
  x_dev, y_dev = split_features(config, 'validation', fn, params, tokenizer, spec)
  encode_seconds = time.perf_counter() - t0
  logging.info('features: train %s, dev %s (%.0f s)', x_train.shape, x_dev.shape,
               encode_seconds)

  t0 = time.perf_counter()
  trained, history = probes.train_probes(
      x_train, y_train, len(spec.label_names), epochs=config.epochs,
      batch_size=config.batch_size, lr=config.lr, mix_lr=config.mix_lr,
      weight_decay=config.weight_decay, seed=config.seed)
  probe_seconds = time.perf_counter() - t0
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
  table = markdown_table(result)
  header = (f'# Layer probe: {config.task}, frozen {config.model}, {config.pooling} '
            f'pooling\n\n'
            f'{len(x_train)} train / {len(x_dev)} dev sentences, max_length '
            f'{config.max_length}, {config.epochs} epochs, seed {config.seed}. Encoding '
            f'{encode_seconds:.0f} s, probes {probe_seconds:.0f} s.\n\n')
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(header + table)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(result, f, indent=2)
  plot(result, os.path.join(out, 'layer_probe.png'))
  print(header + table)
  return result


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  run(flags.FLAGS.config, flags.FLAGS.out,
      command='python -m experiments.layer_probe ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
