r"""LAMB against AdamW as the batch grows (You et al. 2020): final MLM loss per batch size.

    python -m experiments.lamb_batch --config experiments/configs/lamb_batch.py \
        --out runs/lamb_batch

See experiments/configs/lamb_batch.py for the settings. Each (optimizer, batch size) is
one `train_and_evaluate` run of a model pre-trained from scratch (`config.scratch`) on
the same corpus, seeing the same number of sequences; only the batch size, the number
of updates and the (square-root scaled) learning rate change. The final dev MLM loss on
held-out sequences with fixed masks is what is compared. Writes results.md,
results.json and loss_vs_batch.png to --out and ends by printing one JSON line. A run
whose folder holds its row (row.json) from the same trainer settings is not run again.
The study is `research/runs/lamb_batch.py`.
"""
from research.runs import lamb_batch, study

if __name__ == '__main__':
  study.command_line(lamb_batch.run, 'lamb_batch')
