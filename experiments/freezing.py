r"""What to freeze? Full fine-tuning vs feature extractor vs BitFit vs bottom-k, same budget.

    python -m experiments.freezing --config experiments/configs/freezing.py \
        --out runs/freezing
    python -m experiments.freezing --config experiments/configs/freezing.py:runlocal \
        --out /tmp/freezing

The config (experiments/configs/freezing.py) holds the settings, the variants and the
measured numbers; fields can be overridden with --config.<field>=<value>. The study is
`research/runs/freezing.py`.

Every preset is one `research.train.trainer.train_and_evaluate` run of the bundled
MiniLM-L6 with the same data, steps, batch size, schedule (6 % warmup, linear decay),
seed and head (layer_mix 'top', `pooling`, linear classifier); only the freezing rules
(`research.transforms.freeze.preset`) and the learning rate differ:

  preset              frozen                                  learning rate
  full                nothing                                 1e-4
  feature_extractor   the whole encoder (head only trains)    1e-3
  bitfit              encoder weights; encoder biases train   1e-3
  bottom:3            embeddings + layers 0..2                1e-4

Reported per preset: dev accuracy at the end, trainable / total parameters, the bytes
of optimizer state (the same `with_freezing(make_optimizer(...))` the trainer builds,
measured as `optimizer_state_bytes(jax.eval_shape(tx.init, params))`: frozen params
hold no Adam moments), and the wall time of the whole run (data, compile, train,
evaluation, checkpoints). Writes results.md and results.json to --out; each run's
workdir (checkpoints, metrics) goes to --out/workdirs/<preset> and is deleted after the
run unless `keep_workdirs` (a leftover workdir would otherwise be resumed).
"""
from research.runs import freezing, study

if __name__ == '__main__':
  study.command_line(freezing.run, 'freezing')
