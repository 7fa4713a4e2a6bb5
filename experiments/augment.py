r"""TinyBERT-style augmented train data for distillation, labelled by the teacher.

    python -m experiments.augment --task sst2 --mlm runs/tapt_sst2 \
        --teacher runs/sst2_main:best --out data/sst2_aug --train_examples 2000
    # then distil a student on it (soft targets only, as TinyBERT):
    python -m experiments.main --config experiments/configs/glue.py:task=sst2 \
        --workdir runs/student_aug --config.data_dir=data/sst2_aug \
        --config.distill.teachers=runs/sst2_main --config.distill.alpha=1.0

`--mlm` is the masked LM that proposes words (research/data/augment.py): a run folder
of ours with a masked-LM head (a pre-training run, e.g. TAPT on the task's own text), or
a Hugging Face checkpoint folder or Hub id with its MLM head (`BertForMaskedLM`,
`BertForPreTraining`, ...; a bare encoder gets a fresh, untrained head and a warning,
which proposes noise). `--teacher` is the saved run of the task that labels the copies:
its argmax class (classification) or score (regression). The output is a data folder in
the task's original layout: train.tsv = the original examples (gold labels) followed by
the augmented copies (teacher labels), and the other splits copied unchanged; with
`distill.alpha=1` the student learns only the teacher's soft targets there, so the
copies' written labels do not count. `augment.json` records the settings and counts.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np
from absl import app, flags

from research.data import augment, glue_tsv, local_source, tasks
from research.data.sources import default_data_dir, load_examples
from research.data.tokenize import encode
from research.objectives import masked_lm
from research.train import saved_runs

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string('task', None, 'A GLUE task (TSV layout), e.g. sst2, mrpc, stsb.')
  flags.DEFINE_string('mlm', None, 'Masked LM: a pre-training run folder or a HF folder / id.')
  flags.DEFINE_string('teacher', None, 'The task run that labels the copies (runs/x[:best]).')
  flags.DEFINE_string('out', None, 'Data folder to write (the task folder goes inside).')
  flags.DEFINE_string('data_dir', '', "Source data ('' = $RESEARCH_DATA_DIR or ../shared/data/glue).")
  flags.DEFINE_integer('train_examples', 0, 'Augment the first N train examples (0 = all).')
  flags.DEFINE_integer('per_example', 20, 'Copies per example (TinyBERT: 20).')
  flags.DEFINE_float('replace_prob', 0.4, 'Chance each single-piece word is replaced (0.4).')
  flags.DEFINE_integer('top_k', 15, 'Candidates per word from the masked LM (15).')
  flags.DEFINE_integer('max_length', 128, 'Tokens per text given to the masked LM.')
  flags.DEFINE_integer('seed', 0, 'Seed of the replacement draws.')
  flags.mark_flags_as_required(['task', 'mlm', 'teacher', 'out'])


def load_mlm(ref: str) -> tuple[Any, Any, Any]:
  """(logits_at, params, tokenizer) of a pre-training run or a HF masked-LM checkpoint."""
  model, params, tokenizer = saved_runs.load_masked_lm(ref)
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


def run(task: str, mlm: str, teacher: str, out: str, *, data_dir: str = '',
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
  copies = augment.augment_examples(examples, tokenizer, logits_at, params,
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


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  summary = run(FLAGS.task, FLAGS.mlm, FLAGS.teacher, FLAGS.out, data_dir=FLAGS.data_dir,
                train_examples=FLAGS.train_examples, per_example=FLAGS.per_example,
                replace_prob=FLAGS.replace_prob, top_k=FLAGS.top_k,
                max_length=FLAGS.max_length, seed=FLAGS.seed)
  print(json.dumps(summary))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
