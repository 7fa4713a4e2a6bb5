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

from absl import app, flags

from research import logs
from research.runs import augmentation

FLAGS = flags.FLAGS
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


def main(argv):
  del argv
  logs.setup()
  summary = augmentation.augment(
      FLAGS.task, FLAGS.mlm, FLAGS.teacher, FLAGS.out, data_dir=FLAGS.data_dir,
      train_examples=FLAGS.train_examples, per_example=FLAGS.per_example,
      replace_prob=FLAGS.replace_prob, top_k=FLAGS.top_k, max_length=FLAGS.max_length,
      seed=FLAGS.seed)
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
