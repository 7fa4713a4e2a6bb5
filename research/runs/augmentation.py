"""TinyBERT-style augmented train data for distillation, labelled by the teacher.

    summary = augment('sst2', mlm='runs/tapt_sst2', teacher='runs/sst2_main:best',
                      out='data/sst2_aug', train_examples=2000)

The masked LM (a run folder of ours with a masked-LM head, or a Hugging Face folder /
Hub id with its MLM head) proposes replacements for single-piece words
(`research/data/augment.py`); the teacher run labels each copy with its argmax class
(classification) or score (regression). The output is a data folder in the task's
original layout: train.tsv = the original examples (gold labels) followed by the copies
(teacher labels), the other splits copied unchanged; `augment.json` records the
settings and counts.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import numpy as np

from research.data import augment as augment_lib
from research.data import glue_tsv, local_source, tasks
from research.data.sources import default_data_dir, load_examples
from research.data.tokenize import encode
from research.objectives import masked_lm
from research.runs import generation
from research.train import saved_runs


def load_mlm(ref: str) -> tuple[Any, Any, Any]:
  """(logits_at, params, tokenizer) of a pre-training run or a HF masked-LM checkpoint."""
  model, params, tokenizer = generation.load_masked_lm(ref)
  return masked_lm.logits_at_fn(model), params, tokenizer


def teacher_labels(teacher_ref: str, spec, examples: list[dict]) -> list:
  """The teacher run's argmax class (or score) for each example."""
  workdir, which = saved_runs.parse_ref(teacher_ref)
  run = saved_runs.load_run(workdir, which)
  if run.spec.name != spec.name:
    raise ValueError(f'--teacher {teacher_ref} is a {run.spec.name} run, not {spec.name}')
  placeholder = 0.0 if spec.kind == 'regression' else 0
  features = encode(spec, [{**e, 'label': placeholder, 'idx': i} for i, e in enumerate(examples)],
                    saved_runs.run_tokenizer(workdir, run.config), run.config.max_length,
                    run.config.doc_stride).features
  outputs = saved_runs.run_outputs(run, features)
  return run.objective.predictions_from(outputs)


def augment(task: str, mlm: str, teacher: str, out: str, *, data_dir: str = '',
        train_examples: int = 0, per_example: int = 20, replace_prob: float = 0.4,
        top_k: int = 15, max_length: int = 128, seed: int = 0) -> dict[str, Any]:
  spec = tasks.get_task(task)
  if spec.columns is None:
    raise ValueError(f'task {task!r} has no TSV layout; augmentation writes GLUE-style tasks')
  data_dir = data_dir or default_data_dir('glue')
  source = 'local' if data_dir else 'auto'  # no local folder: TFDS, where reachable
  examples = load_examples(spec, 'train', data_dir or None, source)
  if train_examples:
    examples = examples[:train_examples]
  start = time.perf_counter()
  logits_at, params, tokenizer = load_mlm(mlm)
  copies = augment_lib.augment_examples(examples, tokenizer, logits_at, params,
                                    per_example=per_example, replace_prob=replace_prob,
                                    top_k=top_k, seed=seed, max_length=max_length)
  labels = teacher_labels(teacher, spec, copies) if copies else []
  seconds = time.perf_counter() - start
  folder = os.path.join(out, spec.folder)
  os.makedirs(folder, exist_ok=True)
  rows = list(examples) + [{**c, 'label': label} for c, label in zip(copies, labels)]
  glue_tsv.write_glue_tsv(os.path.join(folder, spec.file_name('train')), spec, rows)
  for split, name in spec.files:  # the other splits as they are
    if split == 'train':
      continue
    try:
      shutil.copyfile(local_source.find_task_file(spec, split, data_dir),
                      os.path.join(folder, name))
    except FileNotFoundError:  # not local (TFDS): write the labelled splits
      if not split.startswith('test'):
        glue_tsv.write_glue_tsv(os.path.join(folder, name), spec,
                                load_examples(spec, split, data_dir or None, source))
  summary = {'task': task, 'mlm': mlm, 'teacher': teacher, 'source_examples': len(examples),
             'augmented': len(copies), 'train_rows': len(rows), 'per_example': per_example,
             'replace_prob': replace_prob, 'top_k': top_k, 'seed': seed,
             'seconds': seconds}
  if spec.kind != 'regression' and labels:
    counts = np.bincount(np.asarray(labels, int), minlength=len(spec.label_names))
    summary['teacher_label_counts'] = dict(zip(spec.label_names, counts.tolist()))
  with open(os.path.join(out, 'augment.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary
