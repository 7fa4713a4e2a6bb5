"""One encoder at the inference precisions the CPU benchmarks compare, and fixed batches.

    batches = fixed_batch(tokenizer, texts, batch=8, length=512)
    models = inference_precisions(config, params, calibration_batches(tokenizer, train))
    forward = encoder_forward(models['int8'][0])
    forward(models['int8'][1], batches['input_ids'], batches['attention_mask'])

`inference_precisions` gives the same checkpoint as
- 'float32': the params as loaded;
- 'bfloat16': params cast to bf16 once (not per call) and bf16 compute, float32
  accumulation, softmax statistics and LayerNorm (`mixed_matmul`);
- 'int8': post-training int8 (`transforms/quantize.py`: `calibrate`, then `ptq` with
  the given calibration): per-channel int8 kernels, one static scale per projection
  input, int8 x int8 -> int32 products.
`benchmarks/inference_cpu.py` (ours against PyTorch) and `benchmarks/xla_cpu_paths.py`
(XLA:CPU's flags) build their models here, so both time the same three.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.models import Encoder
from research.models.config import EncoderConfig
from research.transforms import quantize

PRECISIONS = ('float32', 'bfloat16', 'int8')


def fixed_batch(tokenizer, texts: Sequence[str], batch: int, length: int
                ) -> dict[str, np.ndarray]:
  """`batch` of `texts` (cycled) as ids and mask, padded or cut to exactly `length`."""
  if not texts or batch < 1 or length < 2:
    raise ValueError(f'need texts, batch >= 1 and length >= 2; got {len(texts)} texts, '
                     f'batch {batch}, length {length}')
  texts = [texts[i % len(texts)] for i in range(batch)]
  enc = tokenizer(texts, truncation=True, max_length=length)
  ids = np.zeros((batch, length), np.int32)
  mask = np.zeros_like(ids)
  for r, row in enumerate(enc['input_ids']):
    ids[r, :len(row)], mask[r, :len(row)] = row, 1
  return {'input_ids': ids, 'attention_mask': mask}


def calibration_batches(tokenizer, texts: Sequence[str], batch: int = 32, length: int = 64
                        ) -> Iterable[dict[str, np.ndarray]]:
  """`texts` in batches of `batch` at `length` tokens, for `quantize.calibrate`."""
  for i in range(0, len(texts), batch):
    chunk = texts[i:i + batch]
    yield fixed_batch(tokenizer, chunk, len(chunk), length)


def inference_precisions(config: EncoderConfig, params, calibration: Iterable[dict],
                         method: str = 'max', precisions: Sequence[str] = PRECISIONS
                         ) -> dict[str, tuple[EncoderConfig, dict]]:
  """{precision: (config, params)} of one encoder; params are on the device."""
  unknown = sorted(set(precisions) - set(PRECISIONS))
  if unknown:
    raise ValueError(f'unknown precisions {unknown}; known: {PRECISIONS}')
  out = {}
  if 'float32' in precisions:
    out['float32'] = (config, jax.device_put(params))
  if 'bfloat16' in precisions:
    out['bfloat16'] = (config.replace(dtype='bfloat16', param_dtype='bfloat16'),
                       jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16),
                                                   params)))
  if 'int8' in precisions:
    stats = quantize.calibrate(Encoder(config), params, calibration)
    int8_config, int8_params = quantize.ptq(config, params, stats, method)
    out['int8'] = (int8_config, jax.device_put(int8_params))
  return out


def encoder_forward(config: EncoderConfig) -> Callable:
  """A jitted `(params, input_ids, attention_mask) -> last hidden state` of `config`."""
  return jax.jit(lambda p, ids, mask: Encoder(config).apply({'params': p}, ids, mask)[0])
