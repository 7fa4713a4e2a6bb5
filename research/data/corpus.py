"""Unlabelled text -> tokenized pre-training sequences (packed for masked LM, or pairs).

    docs = read_documents('../shared/data/corpus/tinyshakespeare')      # a generator
    features = list(pack_sequences(docs, tokenizer, max_length=128))
    pairs = pair_features(read_documents(path), tokenizer, 128, task='sop', seed=0)

A document is a list of segments (sentences, lines or paragraphs). Sources:
  * plain-text files (`read_documents`): a file, or every *.txt of a folder in sorted
    order; documents are the blocks between blank lines ('blank_lines', each line a
    segment) or whole files ('file', each paragraph a segment). Text is normalised
    first: byte-order marks dropped, CRLF / CR line endings made LF, and a Project
    Gutenberg header and licence footer cut off (the text between the '*** START OF'
    and '*** END OF' lines is kept).
  * a registered task's split (`task_documents`): each example's text(s), labels
    ignored, for task-adaptive pre-training (TAPT, Gururangan et al. 2020).
  * a TFDS text dataset (`tfds_documents`): each record's text field.

`pack_sequences` streams documents through the tokenizer and cuts the token stream into
[CLS] + max_length - 2 tokens + [SEP] (documents joined by an extra [SEP], RoBERTa's
FULL-SENTENCES); only the packed numpy features are kept, never a second copy of the
corpus. `pair_features` builds BERT's sentence pairs (`create_instances_from_document`):
segments of one document are gathered up to the length budget and split at a random
segment boundary into A and B, so a pair never crosses a document boundary; for NSP,
half the B's are replaced by a span of another, random document (label 1 = random, as
Hugging Face's `next_sentence_label`); for SOP, half the pairs are swapped (label 1 =
swapped, ALBERT's `sentence_order_label`). Features carry 'special_tokens_mask' and
'word_starts' for `research/data/masking.py`. Batching, shuffling and the resumable
position are `BatchIterator`'s (its `state_dict`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from research.data.masking import word_starts_from_word_ids

DOCUMENT_SPLITS = ('blank_lines', 'file')
PAIR_TASKS = ('nsp', 'sop')
# Corpora staged under ../shared/data/corpus, and how their documents are delimited.
CORPORA = {'gutenberg': 'file', 'tinyshakespeare': 'blank_lines'}
_START, _END = '*** START OF', '*** END OF'

Document = list  # of segment strings


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """What the trainer reads of a task spec, for a pre-training corpus."""
  name: str
  main_metric: str = 'mlm_accuracy'
  kind: str = 'pretraining'
  label_names: tuple = ()


def normalize(text: str) -> str:
  """Drops byte-order marks and makes every line ending LF."""
  return text.replace('\ufeff', '').replace('\r\n', '\n').replace('\r', '\n')


def strip_gutenberg(text: str) -> str:
  """The text between Project Gutenberg's START and END lines (unchanged without them)."""
  start, end = text.find(_START), text.find(_END)
  if start < 0 or end < start:
    return text
  return text[text.find('\n', start) + 1:end]


def text_files(path: str | os.PathLike) -> list[Path]:
  """`path` itself, or the *.txt files of the folder `path` in sorted order."""
  path = Path(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f'corpus path {path} does not exist')
  files = sorted(path.glob('*.txt'))
  if not files:
    raise ValueError(f'corpus folder {path} holds no .txt files')
  return files


def read_documents(path: str | os.PathLike, split: str = 'blank_lines',
                   max_documents: int = 0) -> Iterator[Document]:
  """Yields the documents of plain-text files; see the module docstring.

  Args:
    path: a text file or a folder of .txt files.
    split: 'blank_lines' (blocks between blank lines, one segment per line) or 'file'
      (one document per file, one segment per paragraph).
    max_documents: stop after this many (0 = all).
  """
  if split not in DOCUMENT_SPLITS:
    raise ValueError(f'document split must be one of {DOCUMENT_SPLITS}, got {split!r}')
  count = 0
  for file in text_files(path):
    text = strip_gutenberg(normalize(file.read_text(encoding='utf-8')))
    blocks = [b for b in re.split(r'\n[ \t]*\n', text) if b.strip()]
    if split == 'file':
      docs = [[' '.join(b.split()) for b in blocks]] if blocks else []
    else:
      docs = [[line.strip() for line in b.split('\n') if line.strip()] for b in blocks]
    for doc in docs:
      yield doc
      count += 1
      if count == max_documents:
        return


def task_documents(task, split: str = 'train', data_dir: str | None = None,
                   source: str = 'auto', max_documents: int = 0) -> Iterator[Document]:
  """Yields each example of a task split as a document of its text(s), labels ignored."""
  from research.data.sources import load_examples  # pylint: disable=g-import-not-at-top
  examples = load_examples(task, split, data_dir or None, source)
  if max_documents:
    examples = examples[:max_documents]
  for example in examples:
    if 'text_a' in example:
      yield [example['text_a']] + ([example['text_b']] if example.get('text_b') else [])
    elif 'tokens' in example:
      yield [' '.join(example['tokens'])]
    elif 'context' in example:
      yield [example['context'], example['question']]
    else:
      raise ValueError(f'no text field in the examples of {task!r}: keys {sorted(example)}')


def tfds_documents(name: str, split: str = 'train', field: str = 'text',
                   data_dir: str | None = None, max_documents: int = 0,
                   reader: str = 'data_source') -> Iterator[Document]:
  """Yields each record's text `field` of a TFDS dataset (e.g. 'lm1b', 'wikipedia/...')
  as a document with one segment per non-empty line.

  `reader` 'data_source' needs the dataset prepared in ArrayRecord format (no
  TensorFlow); 'tf' reads the TFRecord format through `tfds.load`.
  """
  from research.data import tfds_source  # pylint: disable=g-import-not-at-top
  tfds = tfds_source.import_tfds()
  if reader == 'tf':
    records = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir,
                                      shuffle_files=False))
  elif reader == 'data_source':
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    records = (source[i] for i in range(len(source)))
  else:
    raise ValueError(f"reader must be 'data_source' or 'tf', got {reader!r}")
  count = 0
  for record in records:
    if field not in record:
      raise ValueError(f'TFDS {name!r} records have no {field!r} field; they have '
                       f'{sorted(record)}')
    text = record[field]
    text = text.decode('utf-8') if isinstance(text, bytes) else str(text)
    document = [line.strip() for line in normalize(text).split('\n') if line.strip()]
    if document:
      yield document
      count += 1
      if count == max_documents:
        return


def check_vocab(tokenizer, vocab_size: int) -> None:
  """Raises ValueError when the tokenizer's ids do not fit the model's embedding rows."""
  if len(tokenizer) > vocab_size:
    raise ValueError(f'the tokenizer has {len(tokenizer)} tokens but the model embeds only '
                     f'{vocab_size}: ids >= {vocab_size} would index past the table; use '
                     "the model's own tokenizer")


def _special_ids(tokenizer) -> tuple[int, int]:
  if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
    raise ValueError('the tokenizer needs [CLS] and [SEP] tokens (cls_token, sep_token)')
  return tokenizer.cls_token_id, tokenizer.sep_token_id


def tokenize_document(document: Document, tokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
  """(ids int32, word starts bool) per non-empty segment, without special tokens."""
  segments = [s for s in document if s.strip()]
  if not segments:
    return []
  encoded = tokenizer(segments, add_special_tokens=False, verbose=False)
  out = []
  for i, ids in enumerate(encoded['input_ids']):
    if ids:
      out.append((np.asarray(ids, np.int32), word_starts_from_word_ids(encoded.word_ids(i))))
  return out


def _feature(pieces, cls: int | None, sep: int, pair_label: int | None = None) -> dict:
  """[CLS] A [SEP] (B [SEP]) from lists of (ids, starts, special) pieces, A then B;
  `cls` None = the one piece bare (no special tokens)."""
  if cls is None:
    ids, starts, special = (np.concatenate([p[k] for p in pieces[0]]) for k in range(3))
    return {'input_ids': ids.astype(np.int32), 'special_tokens_mask': special.astype(np.int8),
            'word_starts': starts.astype(np.int8)}
  ids, starts, special, types = [np.asarray([cls], np.int32)], [[True]], [[1]], [[0]]
  for segment, piece in enumerate(pieces):
    for part_ids, part_starts, part_special in piece:
      ids.append(part_ids)
      starts.append(part_starts)
      special.append(part_special)
      types.append(np.full(len(part_ids), segment))
    ids.append(np.asarray([sep], np.int32))
    starts.append([True])
    special.append([1])
    types.append([segment])
  feature = {'input_ids': np.concatenate(ids).astype(np.int32),
             'token_type_ids': np.concatenate(types).astype(np.int8),
             'special_tokens_mask': np.concatenate(special).astype(np.int8),
             'word_starts': np.concatenate(starts).astype(np.int8)}
  if pair_label is not None:
    feature['pair_labels'] = np.int32(pair_label)
  return feature


def pack_sequences(documents: Iterable[Document], tokenizer, max_length: int,
                   wrap: bool = True) -> Iterator[dict]:
  """Yields packed features of at most `max_length` tokens; see the module docstring.

  With `wrap=False` (causal LM: GPT-2 has no [CLS] / [SEP]) sequences are bare token
  runs and documents are joined by the end-of-text token ([SEP] if there is none).

  Raises:
    ValueError: for an empty corpus or max_length < 3.
  """
  if wrap:
    cls, sep = _special_ids(tokenizer)
  else:
    cls = None
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if sep is None:
      raise ValueError('unwrapped packing joins documents with the eos (or sep) token; the '
                       'tokenizer has neither')
  body = max_length - 2 if wrap else max_length
  if body < 1:
    raise ValueError(f'max_length={max_length} leaves no room between [CLS] and [SEP]')
  pieces: list = []  # (ids, starts, special) arrays not yet emitted
  size, emitted = 0, 0
  for document in documents:
    segments = tokenize_document(document, tokenizer)
    if not segments:
      continue
    if size:  # an extra separator between documents
      pieces.append((np.asarray([sep], np.int32), np.ones(1, bool), np.ones(1, np.int8)))
      size += 1
    for ids, starts in segments:
      pieces.append((ids, starts, np.zeros(len(ids), np.int8)))
      size += len(ids)
    if size < body:
      continue
    # One concatenation per document (a whole book is one document in 'file' mode).
    ids, starts, special = (np.concatenate([p[k] for p in pieces]) for k in range(3))
    full = len(ids) // body
    for k in range(full):
      part = slice(k * body, (k + 1) * body)
      emitted += 1
      yield _feature([[(ids[part], starts[part], special[part])]], cls, sep)
    rest = slice(full * body, None)
    pieces = [(ids[rest], starts[rest], special[rest])] if len(ids) > full * body else []
    size = len(ids) - full * body
  if size:
    ids, starts, special = (np.concatenate([p[k] for p in pieces]) for k in range(3))
    emitted += 1
    yield _feature([[(ids, starts, special)]], cls, sep)
  if not emitted:
    raise ValueError('the corpus is empty: no document has any token')


def _truncate(a: list, b: list, budget: int) -> None:
  """Drops tokens from the end of the longer of A, B until both fit `budget` (in place)."""
  def length(side):
    return sum(len(p[0]) for p in side)
  while length(a) + length(b) > budget:
    side = a if length(a) >= length(b) else b
    ids, starts, special = side[-1]
    if len(ids) > 1:
      side[-1] = (ids[:-1], starts[:-1], special[:-1])
    elif len(side) > 1:
      side.pop()
    else:
      return  # one token each is the floor; budget >= 2 guarantees that fits


def pair_features(documents: Iterable[Document], tokenizer, max_length: int, *,
                  task: str = 'nsp', seed: int = 0) -> list[dict]:
  """Sentence-pair features for NSP or SOP; see the module docstring.

  Raises:
    ValueError: for an unknown task, an empty corpus, NSP on a single document, or
      when no document has two tokens to make a pair from.
  """
  if task not in PAIR_TASKS:
    raise ValueError(f'pair task must be one of {PAIR_TASKS}, got {task!r}')
  cls, sep = _special_ids(tokenizer)
  budget = max_length - 3
  if budget < 2:
    raise ValueError(f'max_length={max_length} is too short for a pair ([CLS] A [SEP] B [SEP])')
  docs = []
  for document in documents:
    segments = tokenize_document(document, tokenizer)
    if segments:
      docs.append([(ids, starts, np.zeros(len(ids), np.int8)) for ids, starts in segments])
  if not docs:
    raise ValueError('the corpus is empty: no document has any token')
  if task == 'nsp' and len(docs) < 2:
    raise ValueError('NSP draws random next segments from other documents: the corpus '
                     f'needs at least 2 documents, got {len(docs)}')
  rng = np.random.default_rng([int(seed), 0x5053])
  features = []
  for d, doc in enumerate(docs):
    chunk, length, i = [], 0, 0
    while i < len(doc):
      chunk.append(doc[i])
      length += len(doc[i][0])
      if i == len(doc) - 1 or length >= budget:
        if len(chunk) >= 2:  # split at a segment boundary
          split = int(rng.integers(1, len(chunk)))
          a, b = list(chunk[:split]), list(chunk[split:])
        else:  # one long segment: split inside it
          ids, starts, special = chunk[0]
          if len(ids) < 2:
            chunk, length, i = [], 0, i + 1
            continue
          split = int(rng.integers(1, len(ids)))
          a = [(ids[:split], starts[:split], special[:split])]
          b = [(ids[split:], starts[split:], special[split:])]
        label = 0
        if task == 'nsp' and rng.random() < 0.5:
          other = int(rng.integers(len(docs) - 1))
          other += other >= d  # any document but this one
          start = int(rng.integers(len(docs[other])))
          need = budget - sum(len(p[0]) for p in a)
          b, got = [], 0
          for piece in docs[other][start:]:
            b.append(piece)
            got += len(piece[0])
            if got >= need:
              break
          if len(chunk) >= 2:  # the unused segments of this document come back next
            i -= len(chunk) - split
          label = 1
        elif task == 'sop' and rng.random() < 0.5:
          a, b, label = b, a, 1
        _truncate(a, b, budget)
        features.append(_feature([a, b], cls, sep, label))
        chunk, length = [], 0
      i += 1
  if not features:
    raise ValueError('no document is long enough to make a sentence pair (each needs at '
                     'least 2 tokens)')
  return features


def split_dev(features: list[dict], dev_size: int, seed: int) -> tuple[list, list]:
  """(train, dev): `dev_size` features drawn by `seed` held out for evaluation."""
  if dev_size < 0 or dev_size >= len(features):
    raise ValueError(f'dev_size={dev_size} must be in [0, {len(features)}) (the corpus has '
                     f'{len(features)} sequences)')
  held = set(np.random.default_rng([int(seed), 0x444556]).choice(
      len(features), dev_size, replace=False).tolist())
  return ([f for i, f in enumerate(features) if i not in held],
          [f for i, f in enumerate(features) if i in held])
