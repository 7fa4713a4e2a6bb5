r"""Exports a saved run as a Hugging Face folder: the encoder with its task head and tokenizer.

    python -m experiments.export --workdir runs/sst2 --out exported/sst2 [--checkpoint latest]
    # then: transformers.AutoModelForSequenceClassification.from_pretrained('exported/sst2')

The run is rebuilt from its own model.json, so pruned or otherwise non-standard runs
export too. Pruned heads and FFN units are written back at full size with zero
weights (identical outputs; transformers 5 has no `pruned_heads`); `--nopad` writes
`pruned_heads` instead (transformers < 5) and refuses per-layer FFN widths. A head on
a layer mix, or a pooling the family's head does not use, is refused with the reason.
"""
from __future__ import annotations

import os

from absl import app, flags

from research import logs
from research.runs import export


def main(argv):
  del argv
  logs.setup()
  f = flags.FLAGS
  folder = export.export_run(os.path.abspath(f.workdir), f.out, f.checkpoint, f.pad)
  print(f'Exported {f.workdir} ({f.checkpoint} checkpoint) to {folder}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'The run folder to export.')
  flags.DEFINE_string('out', None, 'The Hugging Face folder to write.')
  flags.DEFINE_bool('pad', True, 'Pad pruned layers to full size with zeros.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to export.')
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)
