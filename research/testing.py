"""Small random parameter trees shaped like `TaskModel`'s, for tests of param transforms.

Freezing rules, optimizer masks, LLRD depths and LoRA act on parameter *paths*; these
trees carry the same paths as a real encoder + head without building a model.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def bert_like_params(num_layers: int = 2, hidden: int = 8, vocab: int = 40, ffn: int = 16,
                     positions: int = 16, num_labels: int = 3,
                     attention: Sequence[str] = ('query', 'key', 'value', 'out'),
                     head_dense: bool = True, seed: int = 0) -> dict:
  """Returns {'encoder', 'layer_mix', 'head'} with float32 N(0, 1) weights.

  Norm scales are ones and norm biases zeros, as after initialisation. `attention`
  names the projections each layer holds; fewer leaves compile faster under jit.
  """
  rng = np.random.default_rng(seed)
  arr = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  dense = lambda i, o: {'kernel': arr(i, o), 'bias': arr(o)}
  norm = lambda: {'scale': jnp.ones(hidden), 'bias': jnp.zeros(hidden)}
  encoder = {'embeddings': {'word_embeddings': {'embedding': arr(vocab, hidden)},
                            'position_embeddings': {'embedding': arr(positions, hidden)},
                            'token_type_embeddings': {'embedding': arr(2, hidden)},
                            'layer_norm': norm()}}
  for i in range(num_layers):
    encoder[f'layer_{i}'] = {
        'attention': {name: dense(hidden, hidden) for name in attention},
        'attention_norm': norm(),
        'mlp': {'intermediate': dense(hidden, ffn), 'output': dense(ffn, hidden)},
        'output_norm': norm()}
  encoder['pooler'] = dense(hidden, hidden)
  head = {'dense': dense(hidden, hidden)} if head_dense else {}
  head['out'] = dense(hidden, num_labels)
  return {'encoder': encoder,
          'layer_mix': {'weights': jnp.zeros(num_layers + 1), 'gamma': jnp.ones(())},
          'head': head}


_POSITIVE = ('good', 'great', 'charming', 'wonderful', 'moving', 'funny', 'smart', 'fresh')
_NEGATIVE = ('bad', 'dull', 'boring', 'awful', 'bleak', 'tired', 'weak', 'clumsy')
_FILLER = ('the', 'film', 'story', 'is', 'a', 'and', 'cast', 'very', 'with', 'its', 'plot',
           'music', 'ending', 'of', 'this', 'movie', 'quite', 'often', 'at', 'times')
_NAMES = {'PER': ('john', 'mary', 'smith'), 'ORG': ('reuters', 'google', 'fifa'),
          'LOC': ('paris', 'london', 'germany'), 'MISC': ('english', 'olympic', 'dutch')}


def write_synthetic_data(root, seed: int = 0, sst2: int = 200, conll: int = 64,
                         squad: int = 48) -> dict:
  """Writes tiny task files in the original formats under `root`; returns their folders.

  `root/glue/SST-2/{train,dev}.tsv` (sentiment words decide the label),
  `root/conll2003/{train,valid}.txt` (IOB2 tags on name words) and
  `root/squad/{train,dev}-v1.1.json` (the answer is a name in its context), so tests of
  the trainer and the readers run without the real data sets.
  """
  import json  # pylint: disable=g-import-not-at-top
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  root = Path(root)

  def sentence(label):
    words = list(rng.choice(_FILLER, rng.integers(3, 12)))
    cue = _POSITIVE if label else _NEGATIVE
    for _ in range(rng.integers(1, 3)):
      words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(cue)))
    return ' '.join(words)

  glue = root / 'glue' / 'SST-2'
  glue.mkdir(parents=True, exist_ok=True)
  for name, n in (('train.tsv', sst2), ('dev.tsv', max(sst2 // 4, 8))):
    labels = rng.integers(0, 2, n)
    rows = ['sentence\tlabel'] + [f'{sentence(y)} \t{y}' for y in labels]
    (glue / name).write_text('\n'.join(rows) + '\n')

  ner = root / 'conll2003'
  ner.mkdir(parents=True, exist_ok=True)
  for name, n in (('train.txt', conll), ('valid.txt', max(conll // 2, 8))):
    lines = ['-DOCSTART- -X- -X- O', '']
    for _ in range(n):
      for _ in range(rng.integers(3, 10)):
        if rng.random() < 0.3:
          kind = str(rng.choice(sorted(_NAMES)))
          for j in range(int(rng.integers(1, 3))):
            lines.append(f'{rng.choice(_NAMES[kind])} NNP B-NP {"B" if j == 0 else "I"}-{kind}')
        else:
          lines.append(f'{rng.choice(_FILLER)} NN I-NP O')
      lines.append('')
    (ner / name).write_text('\n'.join(lines) + '\n')

  qa = root / 'squad'
  qa.mkdir(parents=True, exist_ok=True)
  for name, n in (('train-v1.1.json', squad), ('dev-v1.1.json', max(squad // 2, 8))):
    paragraphs = []
    for i in range(n):
      person, place = str(rng.choice(_NAMES['PER'])), str(rng.choice(_NAMES['LOC']))
      filler = ' '.join(rng.choice(_FILLER, 6))
      context = f'{filler} {person} lives in {place} {filler} .'
      start = context.index(f'{person} lives') + len(person) + len(' lives in ')
      qas = [{'id': f'{name[:3]}{i}', 'question': f'where does {person} live ?',
              'answers': [{'text': place, 'answer_start': start}]}]
      paragraphs.append({'context': context, 'qas': qas})
    data = {'version': '1.1', 'data': [{'title': 'synthetic', 'paragraphs': paragraphs}]}
    (qa / name).write_text(json.dumps(data))
  return {'glue': str(root / 'glue'), 'root': str(root)}


def write_synthetic_pairs(root, seed: int = 0, rows: int = 24) -> None:
  """Adds tiny MRPC and STS-B folders (original GLUE TSV layouts) under `root/glue`."""
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  glue = Path(root) / 'glue'
  words = lambda: ' '.join(rng.choice(_FILLER, rng.integers(3, 9)))
  for folder, header, label in (
      ('MRPC', 'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String', lambda: int(rng.integers(0, 2))),
      ('STS-B', 'index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t'
       'sentence2\tscore', lambda: round(float(rng.uniform(0, 5)), 3))):
    (glue / folder).mkdir(parents=True, exist_ok=True)
    for name in ('train.tsv', 'dev.tsv'):
      lines = [header]
      for i in range(rows):
        if folder == 'MRPC':
          lines.append(f'{label()}\t{i}\t{i + 1000}\t{words()}\t{words()}')
        else:
          lines.append(f'{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{words()}\t{words()}\t{label()}')
      (glue / folder / name).write_text('\n'.join(lines) + '\n')
