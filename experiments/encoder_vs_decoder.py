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
from research.runs import encoder_vs_decoder, study

if __name__ == '__main__':
  study.command_line(encoder_vs_decoder.run, 'encoder_vs_decoder')
