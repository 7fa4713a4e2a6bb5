"""Run-level stages: what takes run folders (and settings), writes run folders or result
files, and returns figures. Scripts (`experiments/`), benchmarks and notebooks call these.

    data = run_data.load('runs/sst2:best')                    # a run with its data
    transform.transform_run('runs/sst2', 'runs/r64', 'low_rank', rank=64)
    prune.prune_run('runs/sst2', 'runs/pruned', heads_fraction=0.3)
    fastformers.compress(fastformers.defaults(), 'runs/sst2:best', 'runs/compressed')
    measure.measure('runs/sst2:best', {'int8': 'runs/int8'}, ...)

Studies made of many trainer runs (`lamb_batch`, `pretrain_ablation`,
`encoder_vs_decoder`, `freezing`, `layer_probe`) each have `defaults()` (their config
schema) and `run(config, out)`; `study.py` keeps each run's row beside it for reuse.
Printing stays with the caller; plots are `research/evaluate/plots.py`.
"""
