r"""Architecture choice for generation: an MLM encoder against a GPT-style decoder.

    python -m experiments.encoder_vs_decoder --out runs/encoder_vs_decoder \
        --config experiments/configs/encoder_vs_decoder.py

See experiments/configs/encoder_vs_decoder.py. Writes the training documents to
out/corpus/train.txt (the held-out tail stays out of both runs), trains out/encoder
(masked LM) and out/decoder (causal LM) with the same budget (each reused when the
study is rerun with the same settings, research/runs/study.py), scores the held-out
text, generates from the same prompts with both, and writes results.md, results.json
and samples.md to --out; the last line printed is one JSON object.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from research.runs import encoder_vs_decoder, study

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiments/configs/encoder_vs_decoder.py[:args]')
_OUT = flags.DEFINE_string('out', 'runs/encoder_vs_decoder', 'Folder for results and run folders.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)
  result = encoder_vs_decoder.run(_CONFIG.value, _OUT.value,
                     command='python -m experiments.encoder_vs_decoder ' + ' '.join(sys.argv[1:]))
  print(result['samples_text'])
  print(study.report_text(result))


if __name__ == '__main__':
  app.run(main)
