r"""Which layer of a frozen encoder carries the task? Linear probes per layer + ELMo mix.

    python -m experiments.layer_probe --config experiments/configs/layer_probe.py \
        --out runs/layer_probe
    python -m experiments.layer_probe --config experiments/configs/layer_probe.py:runlocal \
        --out /tmp/layer_probe

The config (experiments/configs/layer_probe.py) holds the settings, the variants and
the measured numbers; fields can be overridden with --config.<field>=<value>. The study
is `research/runs/layer_probe.py`.

The encoder is frozen. Train (or its first `train_examples` sentences) and dev are
encoded once with the jitted encoder into pooled features [N, L+1, hidden], one vector
per hidden state 0..L (`research.evaluate.features`; `cache_dir` keeps them between
runs). On those features one optax run trains L+1 linear probes, one per layer, and
one probe on the ELMo scalar mix (`research.train.probes`).

Pooling is linear (a masked average or a selection), so the scalar mix of the pooled
per-layer features equals the pooled scalar mix of the token-level hidden states:
    pool(sum_j s_j h_j) = sum_j s_j pool(h_j).
Training on cached pooled features is therefore exactly the ELMo mix of a frozen
encoder followed by pooling and a linear head (the mix without per-layer layer norm,
i.e. layer_mix='scalar_mix').

Writes to --out: results.md (table), results.json (numbers, learned mix weights,
timings, config) and layer_probe.png (dev accuracy per layer, the mix as a line, and
the learned mix weights).
"""
from research.runs import layer_probe, study

if __name__ == '__main__':
  study.command_line(layer_probe.run, 'layer_probe')
