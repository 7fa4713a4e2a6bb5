"""A saved run as a Hugging Face folder: the encoder with its task head and tokenizer.

    export_run('runs/sst2', 'exported/sst2')
    # transformers.AutoModelForSequenceClassification.from_pretrained('exported/sst2')
"""
from __future__ import annotations

import os

from research.checkpoints import hf_heads
from research.models import projections
from research.train import saved_runs


def export_run(workdir: str, folder: str, which: str = 'best', pad: bool = True) -> str:
  """Writes a run as a Hugging Face folder (model with its task head, tokenizer).

  Pruned heads and FFN units are padded back with zeros (same outputs; see
  `hf_export.pad_pruned`), or with `pad=False` written as `pruned_heads` (transformers
  < 5). What transformers cannot express (per-layer FFN widths without padding,
  cross-layer sharing outside ALBERT, a head on a layer mix or another pooling than the
  family's) is a ValueError naming why. Compressed projections are written as the dense
  kernels they stand for (low-rank factors multiplied out, LoRA adapters merged, int8
  values dequantized; an
  int8 run's static activation grids are not representable and are dropped).
  """
  run = saved_runs.load_run(workdir, which)
  model, params = run.model, run.params
  if model.encoder.projections:  # low-rank, int8, ...: written as their dense kernels
    params = projections.densify(model.encoder.projections, params)
    model = model.clone(encoder=model.encoder.replace(projections=()))
  tokenizer = os.path.join(run.workdir, saved_runs.TOKENIZER_DIR)
  hf_heads.export_task_model(model, params, folder, run.spec.label_names or None,
                             tokenizer if os.path.isdir(tokenizer) else run.config.model, pad)
  return folder
