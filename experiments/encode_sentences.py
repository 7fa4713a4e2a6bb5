"""Encode sentences with a pre-trained encoder, rank them by similarity, time it.

    python -m experiments.encode_sentences                 # bundled MiniLM, offline
    python -m experiments.encode_sentences --model bert-base-uncased --query "..."

Prints the corpus ranked by cosine similarity to each query and the measured encoding
throughput (sentences/s) on this machine.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from research.models.sentence_encoder import SentenceEncoder

CORPUS = [
    'A man is playing a guitar on stage.',
    'Someone is performing music in front of an audience.',
    'The stock market fell sharply on Monday.',
    'Shares dropped as investors worried about interest rates.',
    'A cat is sleeping on the windowsill.',
    'The kitten naps in the warm sunlight by the window.',
    'Researchers trained a small language model on a laptop.',
    'It rained all weekend, so the football match was cancelled.',
]
QUERIES = ['A musician plays for a crowd.', 'Equities slumped at the start of the week.',
           'A pet dozes in the sun.']


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='minilm-l6',
                      help="'minilm-l6' (bundled), a checkpoint folder or a Hub id")
  parser.add_argument('--query', action='append', help='query sentence (repeatable)')
  parser.add_argument('--batch_size', type=int, default=32)
  args = parser.parse_args(argv)

  encoder = SentenceEncoder.load(args.model)
  print(f'model: {args.model}  layers={encoder.config.num_layers} '
        f'hidden={encoder.config.hidden_size}')
  corpus = encoder.encode(CORPUS)
  for query in args.query or QUERIES:
    scores = corpus @ encoder.encode([query])[0]
    print(f'\nquery: {query}')
    for rank, i in enumerate(np.argsort(-scores)[:4], 1):
      print(f'  {rank}. {scores[i]:.3f}  {CORPUS[i]}')

  # Throughput: 256 sentences in batches, after one warm-up pass compiles the shapes.
  sentences = [CORPUS[i % len(CORPUS)] + f' ({i})' for i in range(256)]
  encoder.encode(sentences, args.batch_size)
  start = time.perf_counter()
  encoder.encode(sentences, args.batch_size)
  seconds = time.perf_counter() - start
  print(f'\nthroughput: {len(sentences) / seconds:.1f} sentences/s '
        f'(batch {args.batch_size}, {len(sentences)} sentences, {seconds:.2f} s)')


if __name__ == '__main__':
  main()
