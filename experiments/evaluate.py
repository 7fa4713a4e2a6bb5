r"""Scores saved runs on their task's dev split; given several runs, also their ensemble.

    python -m experiments.evaluate --workdir runs/sst2_a --workdir runs/sst2_b
    python -m experiments.evaluate --workdir runs/mrpc --checkpoint latest --split validation
    python -m experiments.evaluate --hf_model some-org/bert-sst2 --task sst2   # a Hub model

Each workdir's `config.json` (written by the trainer) says which model, task, head and
data to rebuild; for a workdir without one, pass the config the run was started with
(`--config experiments/configs/glue.py:task=sst2 --config.max_length=64`). The default
checkpoint is the run's best (`best/`); `--checkpoint latest` takes the newest
`checkpoints/<step>`, using its parameter average when the run kept one (`ema_decay`).

`--hf_model` scores a fine-tuned Hugging Face classifier, tagger or QA folder (or Hub id)
with its own head on `--task`'s split, its labels mapped to the task's by name.

The ensemble averages class probabilities (classification) or predicted scores
(regression) over the runs, which must share the task and the split. Results are
printed and, with `--out FILE`, written as JSON.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from research import logs
from research.runs import scoring

flags.DEFINE_multi_string('workdir', None, 'A run folder (repeat for several).')
flags.DEFINE_string('hf_model', None, 'A fine-tuned Hugging Face folder or Hub id instead.')
flags.DEFINE_string('task', 'sst2', 'With --hf_model: the task to score it on.')
flags.DEFINE_string('data_dir', None, 'With --hf_model: the data folder (default: '
                    '$RESEARCH_DATA_DIR or ../shared/data).')
config_flags.DEFINE_config_file('config', None, 'Config for workdirs without config.json.')
flags.DEFINE_list('hf_labels', None, "With --hf_model: its outputs' labels in row order, "
                  "when its config's id2label does not match its classifier.")
flags.DEFINE_integer('hf_num_labels', None, 'With --hf_model: or only their number '
                     '(generic names LABEL_0, ...).')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to score.')
flags.DEFINE_string('split', None, "Split to score (default: the config's eval_split).")
flags.DEFINE_string('out', None, 'Optional JSON file for the results.')
flags.register_validator('workdir', lambda w: bool(w) != bool(flags.FLAGS.hf_model),
                         message='give --workdir (one or more) or --hf_model')


def main(argv):
  del argv
  logs.setup()
  f = flags.FLAGS
  if f.hf_model:
    split = f.split or 'validation'
    results = scoring.score_hf_model(f.hf_model, f.task, split, f.data_dir,
                                     label_names=f.hf_labels, num_labels=f.hf_num_labels)
    print(f'{f.hf_model} on {f.task}/{split}: {scoring.format_scores(results)}')
  else:
    results = scoring.score_runs([os.path.abspath(w) for w in f.workdir], f.checkpoint,
                                 f.split, f.config)
    for workdir, scores in results['runs'].items():
      print(f'{workdir} ({f.checkpoint}, step {scores["step"]}): '
            f'{scoring.format_scores(scores)}')
    if 'ensemble' in results:
      print(f'ensemble of {len(results["runs"])} (mean of outputs): '
            f'{scoring.format_scores(results["ensemble"])}')
  if f.out:
    with open(f.out, 'w') as out:
      json.dump(results, out, indent=2)


if __name__ == '__main__':
  app.run(main)
