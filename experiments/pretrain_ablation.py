r"""NSP / SOP / MLM-only ablation: pre-train with each objective, fine-tune on pair tasks.

    python -m experiments.pretrain_ablation --out runs/pretrain_ablation \
        --config experiments/configs/pretrain_ablation.py

See experiments/configs/pretrain_ablation.py. Runs go to out/pretrain_<objective> and
out/<objective>/<task>_s<seed>; each keeps its row and is reused when the study is
rerun with the same settings (research/runs/study.py); the study is
`research/runs/pretrain_ablation.py`. Writes results.md and
results.json to --out and ends by printing one JSON line.
"""
from research.runs import pretrain_ablation, study

if __name__ == '__main__':
  study.command_line(pretrain_ablation.run, 'pretrain_ablation')
