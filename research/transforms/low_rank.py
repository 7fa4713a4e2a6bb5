"""Low-rank factorization of projection kernels by truncated SVD: a smaller, faster model.

    config, params, report = factorize(config, params, rank=64)          # every projection
    config, params, report = factorize(config, params, energy=0.9,       # by spectrum energy
                                       sites=r'layer_\\d+/mlp/.*')

Each chosen projection's kernel W [in axes..., out axes...] (flattened to [m, n]) is
replaced by two factors a = U_r S_r [in axes..., r] and b = V_r^T [r, out axes...], the
best rank-r approximation in Frobenius norm (Eckart-Young). The new config names the
projection kind `low_rank:r` for exactly those sites (`research/models/projections.py`),
so the encoder itself is unchanged and the model really is smaller: r (m + n) weights
and multiply-adds per token instead of m n. A site whose rank would not save anything
(r >= m n / (m + n)) stays dense. With `energy`, each kernel keeps the fewest singular
values whose squares sum to at least that fraction of the total.

The params are the encoder's (or a TaskModel's with an 'encoder' entry). Follow with a
short recovery fine-tune (`--config.init_from` a run written with `saved_runs.write_run`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import flax
import numpy as np

from research.models.config import EncoderConfig

# The encoder's projections, by site (paths inside the encoder).
PROJECTIONS = r'layer_\d+/(attention/(query|key|value|out)|mlp/(intermediate|output))'
# Input axes of each projection's kernel (attention/out's [heads, head_dim] -> 2).
_IN_AXES = {'out': 2}


@dataclasses.dataclass(frozen=True)
class SiteReport:
  site: str
  shape: tuple[int, ...]
  rank: int
  kept_energy: float
  dense_params: int
  factor_params: int


def _rank_for(singular: np.ndarray, rank: int | None, energy: float | None) -> int:
  if rank is not None:
    return min(rank, len(singular))
  total = np.square(singular).sum()
  if total == 0:
    return 1
  cumulative = np.cumsum(np.square(singular)) / total
  return int(np.searchsorted(cumulative, energy - 1e-12) + 1)


def factorize(config: EncoderConfig, params: Mapping[str, Any], *, rank: int | None = None,
              energy: float | None = None, sites: str = PROJECTIONS
              ) -> tuple[EncoderConfig, dict, list[SiteReport]]:
  """Replaces matching dense projection kernels by truncated-SVD factors.

  Args:
    config: the encoder's config (its `projections` rules are extended).
    params: the encoder's params, or a TaskModel's (with an 'encoder' entry).
    rank: keep this many singular values (at most each chosen kernel's smaller side).
    energy: or keep the fewest whose squared sum reaches this fraction, in (0, 1].
    sites: regex (full match) over encoder sites, e.g. 'layer_\\d+/mlp/.*'.

  Returns:
    (new config, new params, one report per factorized site).
  """
  if (rank is None) == (energy is None):
    raise ValueError('give exactly one of rank or energy')
  if rank is not None and rank < 1:
    raise ValueError(f'rank must be >= 1, got {rank}')
  if energy is not None and not 0.0 < energy <= 1.0:
    raise ValueError(f'energy must be in (0, 1], got {energy}')
  if config.attention_map is not None or config.ffn_map is not None:
    raise ValueError('factorize a model before sharing its layers')
  task = 'encoder' in params
  flat = flax.traverse_util.flatten_dict(params['encoder'] if task else params, sep='/')
  pattern = re.compile(sites)
  rules, reports, matched = [], [], 0
  for path in sorted(flat):
    if not path.endswith('/kernel'):
      continue
    site = path[:-len('/kernel')]
    if not pattern.fullmatch(site) or not re.fullmatch(PROJECTIONS, site):
      continue
    kernel = np.asarray(flat[path], np.float32)
    n_in = _IN_AXES.get(site.rsplit('/', 1)[-1], 1)
    m, n = math.prod(kernel.shape[:n_in]), math.prod(kernel.shape[n_in:])
    matched += 1
    if min(m, n) == 0:
      continue
    if rank is not None and rank > min(m, n):
      # A rank-r factorization of an m x n kernel needs r <= min(m, n); asking for more
      # is a mistake about the model (or the flag), not a request to stay dense.
      raise ValueError(f'rank {rank} is above the rank of {site} (kernel {kernel.shape}, '
                       f'{m} x {n}: at most {min(m, n)})')
    u, s, vt = np.linalg.svd(kernel.reshape(m, n).astype(np.float64), full_matrices=False)
    r = _rank_for(s, rank, energy)
    if r * (m + n) >= m * n:
      continue  # no saving: stays dense
    del flat[path]
    flat[f'{site}/a'] = (u[:, :r] * s[:r]).reshape(*kernel.shape[:n_in], r).astype(np.float32)
    flat[f'{site}/b'] = vt[:r].reshape(r, *kernel.shape[n_in:]).astype(np.float32)
    rules.append((f'(.*/)?{site}', f'low_rank:{r}'))
    kept = float(np.square(s[:r]).sum() / max(np.square(s).sum(), 1e-30))
    reports.append(SiteReport(site, kernel.shape, r, kept, m * n, r * (m + n)))
  if not matched:
    raise ValueError(f'sites {sites!r} match no dense projection kernel in params (sites '
                     "look like 'layer_0/mlp/intermediate'; a factorized one has no kernel)")
  encoder = flax.traverse_util.unflatten_dict(flat, sep='/')
  new_params = {**params, 'encoder': encoder} if task else encoder
  new_config = config.replace(projections=tuple(rules) + tuple(config.projections))
  return new_config, new_params, reports


def factorize_embeddings(config: EncoderConfig, params: Mapping[str, Any], size: int
                         ) -> tuple[EncoderConfig, dict, float]:
  """Factorised embeddings (ALBERT's E < H) from a model with full-width tables.

  The word, position and token-type tables, stacked, are factorised by one truncated
  SVD: each table keeps its rows in the top-`size` right singular basis B ([H, size]),
  and a new embedding projection maps back with B^T. Since the tables are summed before
  any nonlinearity, the projected sum equals the original sum's rank-`size`
  approximation; the projection runs before the embedding LayerNorm
  (`embedding_project_first`) so the normalisation sees what it saw before.

  Returns:
    (new config, new params, the fraction of the stacked tables' energy kept).
  """
  if config.embed_size != config.hidden_size:
    raise ValueError(f'the embedding is already factorised ({config.embed_size} -> '
                     f'{config.hidden_size})')
  if not 1 <= size < config.hidden_size:
    raise ValueError(f'size must be in 1..{config.hidden_size - 1}, got {size}')
  task = 'encoder' in params
  encoder = dict(params['encoder'] if task else params)
  embeddings = {k: dict(v) if isinstance(v, Mapping) else v
                for k, v in encoder['embeddings'].items()}
  names = [n for n in ('word_embeddings', 'position_embeddings', 'token_type_embeddings')
           if n in embeddings]
  tables = [np.asarray(embeddings[n]['embedding'], np.float64) for n in names]
  _, s, vt = np.linalg.svd(np.concatenate(tables), full_matrices=False)
  basis = vt[:size].T  # [H, size]
  for name, table in zip(names, tables):
    embeddings[name] = {'embedding': (table @ basis).astype(np.float32)}
  embeddings['projection'] = {'kernel': basis.T.astype(np.float32),
                              'bias': np.zeros(config.hidden_size, np.float32)}
  encoder['embeddings'] = embeddings
  kept = float(np.square(s[:size]).sum() / np.square(s).sum())
  new_config = config.replace(embedding_size=size, embedding_project_first=True)
  return new_config, ({**params, 'encoder': encoder} if task else encoder), kept
