r"""Accuracy parity: ours against transformers + PyTorch, same checkpoint, data, recipe, steps.

    python benchmarks/accuracy_parity.py --task conll2003 --seeds 0,1          # 1 epoch
    python benchmarks/accuracy_parity.py --task conll2003 --seeds 0,1 --epochs 3
    python benchmarks/accuracy_parity.py --task sst2 --seeds 0,1 --max_length 64
    python benchmarks/accuracy_parity.py --task mrpc --seeds 0,1
    python benchmarks/accuracy_parity.py --task conll2003 --ours bucket_batches=0   # an ablation
    python benchmarks/accuracy_parity.py --task sst2 --train_examples 2000 --seeds 0  # CPU slice

Both sides see the same encoded features (our tokenization: labels on each word's
first sub-token), the same number of optimizer steps of the same batch size, AdamW
(lr, weight decay off biases and LayerNorm, eps 1e-8), clipping at 1.0, linear warmup
and decay, dropout 0.1, the same max length, and are scored by the same metric code.

* ours: `research.train.trainer.train_and_evaluate` at the project's default config for
  the task (`experiments/configs/glue.py`, `conll.py`, `squad.py`: its pooling, bucketing
  and so on), with only the shared recipe fields set here; `--ours key=value` overrides.
* torch: `AutoModelFor{SequenceClassification,TokenClassification,QuestionAnswering}`
  from the same checkpoint (a new head, what a transformers user would pick), random
  batches (a fresh permutation each epoch, no length bucketing), `torch.optim.AdamW`,
  `get_linear_schedule_with_warmup`, `clip_grad_norm_`, float32, 2 threads.

Prints each side's dev metric per seed, their means, the difference and the seed
spread, and with two or more seeds on both sides the paired per-seed differences and
their t-test; the last line is one JSON object
{"task", "metric", "ours": [per seed], "torch": [per seed], "diff": mean(ours) - mean(torch),
 "paired": {...}, ...}. Seeds run at different times combine afterwards:

    python benchmarks/accuracy_parity.py --combine runs/mrpc_s01.json,runs/mrpc_s34.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

THREADS = int(os.environ.get('BENCH_THREADS', '2'))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from research import objectives, specs  # pylint: disable=wrong-import-position
from research.checkpoints import load_tokenizer, resolve  # pylint: disable=wrong-import-position
from research.data import tasks  # pylint: disable=wrong-import-position
from research.data.batching import BatchIterator  # pylint: disable=wrong-import-position
from research.evaluate import gather, speed  # pylint: disable=wrong-import-position
from research.train.build import load_split  # pylint: disable=wrong-import-position


def paired_difference(ours: dict[int, float], torch: dict[int, float]) -> dict | None:
  """Per-seed differences ours - torch over the seeds both sides ran, and a paired t-test.

  A seed does not give both sides the same data order or head draw, so pairing removes
  no shared noise; it lines up runs made together (same machine, same commit). The t
  statistic (mean / standard error, n - 1 degrees of freedom) says whether the gap stands
  out from the seed-to-seed spread of the differences. None with fewer than two paired
  seeds.
  """
  seeds = sorted(set(ours) & set(torch))
  if len(seeds) < 2:
    return None
  diffs = [ours[s] - torch[s] for s in seeds]
  mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
  se = sd / len(diffs) ** 0.5
  if se > 0:
    from scipy import stats  # pylint: disable=g-import-not-at-top
    t = mean / se
    p_value = float(2 * stats.t.sf(abs(t), len(diffs) - 1))
  else:  # identical differences on every seed
    t = math.copysign(math.inf, mean) if mean else 0.0
    p_value = 1.0 if mean == 0 else 0.0
  return {'seeds': seeds, 'diffs': diffs, 'mean': mean, 'sd': sd, 'se': se, 't': t,
          'p_two_sided': p_value}


_SAME_RUN = ('task', 'metric', 'model', 'epochs', 'train_examples')


def combine(lines: list[dict]) -> tuple[dict, dict[str, dict[int, float]]]:
  """Merges the JSON lines of several invocations (seeds run at different times) into one.

  Every line must describe the same comparison (task, metric, model, epochs, train
  examples) and, where it has our side, the same `--ours` overrides; a seed measured
  twice on one side is refused rather than silently averaged. Returns the merged line
  and each side's {seed: value}.
  """
  if not lines:
    raise ValueError('--combine needs at least one JSON file')
  first = lines[0]
  merged = {key: first.get(key) for key in _SAME_RUN}
  merged['ours_overrides'] = None
  by_side: dict[str, dict[int, float]] = {'ours': {}, 'torch': {}}
  minutes: dict[str, dict[int, float]] = {'ours': {}, 'torch': {}}
  for i, line in enumerate(lines):
    for key in _SAME_RUN:
      if line.get(key) != merged[key]:
        raise ValueError(f'line {i} has {key}={line.get(key)!r}, line 0 has {merged[key]!r}: '
                         'not the same comparison')
    if 'ours' in line:
      overrides = sorted(line.get('ours_overrides', []))
      if merged['ours_overrides'] is None:
        merged['ours_overrides'] = overrides
      elif overrides != merged['ours_overrides']:
        raise ValueError(f'line {i} has our overrides {overrides}, an earlier line '
                         f'{merged["ours_overrides"]}: not the same config of ours')
    for side in by_side:
      for j, (seed, value) in enumerate(zip(line['seeds'], line.get(side, []))):
        if value is None:  # a combined line: this side did not run this seed
          continue
        if seed in by_side[side]:
          raise ValueError(f'seed {seed} of {side} appears twice (line {i})')
        by_side[side][seed] = value
        if f'{side}_minutes' in line:
          minutes[side][seed] = line[f'{side}_minutes'][j]
  merged['ours_overrides'] = merged['ours_overrides'] or []
  merged['seeds'] = sorted(set(by_side['ours']) | set(by_side['torch']))
  for side, values in by_side.items():  # lists aligned with `seeds`, None where not run
    if values:
      merged[side] = [values.get(seed) for seed in merged['seeds']]
      merged[f'{side}_minutes'] = [minutes[side].get(seed) for seed in merged['seeds']]
  return merged, by_side


def summarize(summary: dict, ours: dict[int, float], torch: dict[int, float]) -> dict:
  """Adds means, the difference of the means and the paired test to `summary`; prints them."""
  for side, values in (('ours', ours), ('torch', torch)):
    if values:
      spread = statistics.stdev(values.values()) if len(values) > 1 else 0.0
      print(f'{side:>5}: mean {statistics.mean(values.values()):.2f} over {len(values)} '
            f'seeds, seed spread (std) {spread:.2f}')
  if ours and torch:
    summary['diff'] = statistics.mean(ours.values()) - statistics.mean(torch.values())
    print(f'diff mean(ours) - mean(torch): {summary["diff"]:+.2f}')
    paired = paired_difference(ours, torch)
    if paired:
      summary['paired'] = paired
      print(f'paired over seeds {paired["seeds"]}: mean {paired["mean"]:+.2f}, '
            f'std {paired["sd"]:.2f}, standard error {paired["se"]:.2f}, '
            f't = {paired["t"]:.2f} (p = {paired["p_two_sided"]:.2f}, two-sided)')
  return summary


def project_config(task: str, model: str):
  """The project's default config for `task` (what `experiments.main` would run)."""
  from experiments.configs import conll, glue, squad  # pylint: disable=g-import-not-at-top
  if task == 'conll2003':
    return conll.get_config(f'model={model}')
  if task == 'squad':
    return squad.get_config(f'model={model}')
  return glue.get_config(f'task={task},model={model}')


def shared_recipe(config, args, seed: int):
  """Sets the fields both sides share; returns the config."""
  config.seed = seed
  config.batch_size, config.max_length = args.batch_size, args.max_length
  config.num_epochs, config.total_steps = args.epochs, 0
  config.train_examples, config.eval_examples = args.train_examples, args.eval_examples
  config.dropout, config.dtype = 0.1, 'float32'
  config.optimizer.learning_rate = args.lr
  config.optimizer.warmup_ratio = args.warmup_ratio
  config.optimizer.weight_decay = args.weight_decay
  config.optimizer.clip_norm = 1.0
  config.optimizer.schedule = 'linear'
  config.eval_every, config.checkpoint_every = 0, 0
  config.log_every = 100
  if args.data_dir:
    config.data_dir = args.data_dir
  for key, value in specs.fields(args.ours, convert=str, what='--ours').items():
    target, name = config, key
    if '.' in key:
      outer, name = key.split('.', 1)
      target = config[outer]
    target[name] = type(target[name])(value) if not isinstance(target[name], bool) else (
        value.lower() in ('1', 'true', 'yes'))
  return config


def run_ours(config, spec, workdir: str | None = None) -> tuple[float, float]:
  """Our trainer; the run folder is kept in `workdir` when given (e.g. to score test)."""
  from research.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
  def train():
    if workdir:
      return train_and_evaluate(config, workdir)
    with tempfile.TemporaryDirectory() as tmp:
      return train_and_evaluate(config, tmp)
  result, seconds = speed.timed_call(train)
  return result['final'][spec.main_metric], seconds


def run_torch(config, spec, args) -> tuple[float, float]:
  """transformers + PyTorch on the same features and recipe; returns (metric, seconds)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(THREADS)
  torch.manual_seed(config.seed)
  transformers.logging.set_verbosity_error()  # the expected 'classifier.* newly initialised'
  t0 = time.perf_counter()
  tokenizer = load_tokenizer(config.model)
  _, train = load_split(config, spec, tokenizer, config.train_split, config.train_examples,
                        training=True)
  examples, dev = load_split(config, spec, tokenizer, config.eval_split, config.eval_examples)
  objective = objectives.for_task(spec)
  folder = str(resolve(config.model))
  common = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
  if spec.kind == 'span':
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(folder, **common)
  elif spec.kind == 'tagging':
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        folder, num_labels=objective.num_labels, **common)
  else:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=objective.num_labels,
        problem_type='regression' if spec.kind == 'regression' else None, **common)
  no_decay = lambda n: n.endswith('bias') or 'LayerNorm' in n or 'layer_norm' in n
  groups = [{'params': [p for n, p in model.named_parameters() if not no_decay(n)],
             'weight_decay': config.optimizer.weight_decay},
            {'params': [p for n, p in model.named_parameters() if no_decay(n)],
             'weight_decay': 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=config.optimizer.learning_rate, eps=1e-8)
  batches = BatchIterator(train, config.batch_size, max_length=config.max_length,
                          pad_multiple=config.pad_multiple, shuffle=True, seed=config.seed,
                          bucket_batches=0, drop_remainder=True, num_epochs=None,
                          pad_id=tokenizer.pad_token_id or 0)
  total = config.num_epochs * len(batches)
  warmup = int(round(config.optimizer.warmup_ratio * total))
  scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
  tensor = lambda x, dtype=torch.long: torch.from_numpy(np.asarray(x)).to(dtype)
  model.train()
  for _ in range(total):
    batch = next(batches)
    inputs = {'input_ids': tensor(batch['input_ids']),
              'attention_mask': tensor(batch['attention_mask'])}
    if 'token_type_ids' in batch and model.config.model_type not in ('distilbert', 'roberta'):
      inputs['token_type_ids'] = tensor(batch['token_type_ids'])
    if spec.kind == 'span':
      inputs['start_positions'] = tensor(batch['start_positions'])
      inputs['end_positions'] = tensor(batch['end_positions'])
    elif spec.kind == 'regression':
      inputs['labels'] = tensor(batch['labels'], torch.float32)
    else:
      inputs['labels'] = tensor(batch['labels'])
    loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
  model.eval()

  def predict(batch):
    inputs = {'input_ids': tensor(batch['input_ids']),
              'attention_mask': tensor(batch['attention_mask'])}
    if 'token_type_ids' in batch and model.config.model_type not in ('distilbert', 'roberta'):
      inputs['token_type_ids'] = tensor(batch['token_type_ids'])
    with torch.no_grad():
      out = model(**inputs)
    if spec.kind == 'span':
      return {'start': out.start_logits.numpy(), 'end': out.end_logits.numpy()}
    logits = out.logits.numpy()
    return logits[..., 0] if spec.kind == 'regression' else logits.argmax(-1)

  outputs = gather.gather_outputs(predict, dev, config.eval_batch_size,
                                  max_length=config.max_length,
                                  pad_multiple=config.pad_multiple,
                                  pad_id=tokenizer.pad_token_id or 0)
  scores = objective.score(spec, examples, dev, outputs)
  return scores[spec.main_metric], time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--task', default='conll2003')
  p.add_argument('--model', default='minilm-l6')
  p.add_argument('--seeds', default='0,1')
  p.add_argument('--epochs', type=int, default=1)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--max_length', type=int, default=128)
  p.add_argument('--lr', type=float, default=1e-4)
  p.add_argument('--warmup_ratio', type=float, default=0.06)
  p.add_argument('--weight_decay', type=float, default=0.01)
  p.add_argument('--train_examples', type=int, default=0, help='0 = the whole train split')
  p.add_argument('--eval_examples', type=int, default=0)
  p.add_argument('--data_dir', default=None)
  p.add_argument('--sides', default='ours,torch')
  p.add_argument('--ours', action='append', default=[], metavar='FIELD=VALUE',
                 help='override a field of our config (repeatable), e.g. bucket_batches=0')
  p.add_argument('--out', default=None, help='also write the JSON result here')
  p.add_argument('--keep_runs', default=None,
                 help='keep our run folders here (<task>_s<seed>), e.g. to score the test split')
  p.add_argument('--combine', default=None, metavar='A.json,B.json',
                 help='train nothing: merge the JSON lines of earlier runs (other seeds of '
                      'the same comparison) and print their joint summary')
  args = p.parse_args()
  if args.combine:
    lines = []
    for path in specs.items(args.combine, what='--combine'):
      with open(path) as f:
        lines.append(json.loads(f.read().strip().splitlines()[-1]))
    try:
      merged, by_side = combine(lines)
    except ValueError as e:
      p.error(str(e))
    for side, values in by_side.items():
      for seed, value in sorted(values.items()):
        print(f'seed {seed} {side:>5}: {merged["metric"]} {value:.2f}')
    summarize(merged, by_side['ours'], by_side['torch'])
    print(json.dumps(merged))
    return
  spec = tasks.get_task(args.task)
  seeds = specs.items(args.seeds, int, what='--seeds')
  sides = specs.items(args.sides, what='--sides')
  results = {side: [] for side in sides}
  seconds = {side: [] for side in sides}
  for seed in seeds:
    for side in sides:
      config = shared_recipe(project_config(args.task, args.model), args, seed)
      if side == 'ours':
        workdir = (os.path.join(args.keep_runs, f'{args.task}_s{seed}') if args.keep_runs
                   else None)
        value, took = run_ours(config, spec, workdir)
      else:
        value, took = run_torch(config, spec, args)
      results[side].append(value)
      seconds[side].append(took)
      print(f'seed {seed} {side:>5}: {spec.main_metric} {value:.2f} ({took / 60:.1f} min)',
            flush=True)
  summary = {'task': args.task, 'metric': spec.main_metric, 'model': args.model,
             'epochs': args.epochs, 'train_examples': args.train_examples, 'seeds': seeds,
             'ours_overrides': args.ours}
  for side in sides:
    summary[side] = results[side]
    summary[f'{side}_minutes'] = [s / 60 for s in seconds[side]]
    print(f'{side:>5}: {statistics.mean(seconds[side]) / 60:.1f} min per run')
  summarize(summary, dict(zip(seeds, results.get('ours', []))),
            dict(zip(seeds, results.get('torch', []))))
  line = json.dumps(summary)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(line + '\n')
  print(line)


if __name__ == '__main__':
  main()
