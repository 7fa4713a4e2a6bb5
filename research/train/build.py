"""From a trainer config to its parts: the task model and a split's encoded features
(or, with `config.corpus`, a pre-training corpus's sequences and masked batches).

Shared by the trainer, saved runs, teachers and experiments/evaluate.py, so each of
them rebuilds exactly what the trainer built.
"""
from __future__ import annotations

import logging
import os

import jax

from research import objectives, specs
from research.data import corpus, corpus_cache, masking, tasks, tokenizer_fit
from research.data.batching import BatchIterator
from research.data.sources import default_data_dir, load_examples
from research.data.tokenize import encode
from research.models.config import EncoderConfig
from research.models.heads import TaskModel


def build_model(config, spec: tasks.TaskSpec, encoder_config: EncoderConfig) -> TaskModel:
  """The task model a config describes (encoder + layer mix + the task's objective)."""
  if uses_corpus(config):  # pre-training: the objective comes from config.corpus
    return TaskModel(encoder_config, pretraining_objective(config), layer_mix=config.layer_mix)
  objective = objectives.for_task(spec, pooling=config.pooling, head_hidden=config.head_hidden,
                                  head_activation=config.head_activation,
                                  head_dropout=config.dropout,
                                  options={'token_loss': config.token_loss})
  return TaskModel(encoder_config, objective, layer_mix=config.layer_mix)


def load_split(config, spec: tasks.TaskSpec, tokenizer, split: str, limit: int = 0,
               training: bool = False) -> tuple[list, list]:
  """(examples, encoded features) of one split; the first `limit` examples if > 0."""
  examples = load_examples(spec, split, config.data_dir or None, config.data_source)
  if limit:
    examples = examples[:limit]
  tokenizer_fit.check(tokenizer, (t for e in examples[:tokenizer_fit.SAMPLE]
                                  for t in tokenizer_fit.texts_of(e)), f'{spec.name}/{split}')
  features = encode(spec, examples, tokenizer, config.max_length, config.doc_stride,
                    training=training).features
  return examples, features


# -- Pre-training on a text corpus (config.corpus) -------------------------------------

# config.corpus.objective -> (objective kind, its fields).
PRETRAINING = {'mlm': ('masked_lm', {}), 'mlm+nsp': ('pretraining', {'pair': 'nsp'}),
               'mlm+sop': ('pretraining', {'pair': 'sop'}), 'clm': ('causal_lm', {})}


def uses_corpus(config) -> bool:
  """Whether the config pre-trains on a corpus (`config.corpus.source` set)."""
  return bool(config.corpus.source)


def pretraining_objective(config) -> objectives.Objective:
  """The objective `config.corpus.objective` names ('mlm', 'mlm+nsp', 'mlm+sop', 'clm')."""
  name = config.corpus.objective
  if name not in PRETRAINING:
    raise ValueError(f'config.corpus.objective={name!r}; expected one of {sorted(PRETRAINING)}')
  kind, fields = PRETRAINING[name]
  if kind not in objectives.KINDS:
    raise ValueError(f'config.corpus.objective={name!r} needs the {kind!r} objective, which '
                     'is not registered in research/objectives')
  if 'pair' in fields:
    fields = {**fields, 'pooling': config.corpus.pair_pooling}
  if kind != 'causal_lm':
    share = config.corpus.predict_share
    if share and share < config.corpus.mask_rate:
      raise ValueError(f'config.corpus.predict_share={share} is below mask_rate='
                       f'{config.corpus.mask_rate}: some masked tokens would not be scored')
    fields = {**fields, 'predict_share': share}
  return objectives.make(kind, **fields)


def corpus_documents(config):
  """A generator of the documents `config.corpus.source` names: a staged corpus
  ('gutenberg', 'tinyshakespeare'), a text file or folder, 'task:<name>' (the
  unlabelled text of that task's `config.train_split`, for task-adaptive pre-training)
  or 'tfds:<name>[:<split>]' (the `corpus.tfds_field` text of a TFDS dataset)."""
  c = config.corpus
  if c.source.startswith('task:'):
    data_dir = config.data_dir or default_data_dir('glue') or None
    return corpus.task_documents(c.source[len('task:'):], config.train_split, data_dir,
                                 config.data_source, c.max_documents)
  if c.source.startswith('tfds:'):  # 'tfds:<name>[:<split>]', e.g. 'tfds:lm1b:train'
    name, split = specs.name_arg(c.source[len('tfds:'):])
    return corpus.tfds_documents(name, split or 'train', c.tfds_field,
                                 config.data_dir or None, c.max_documents)
  path, split = corpus_path(c.source, c.documents, c.data_dir)
  return corpus.read_documents(path, split, c.max_documents)


def corpus_path(source: str, documents: str = '', data_dir: str = '') -> tuple[str, str]:
  """(path, document split) of a staged corpus name ('gutenberg', 'tinyshakespeare':
  under `data_dir`, else the default corpus folder) or of a .txt file or folder."""
  if source not in corpus.CORPORA:
    return source, documents or 'blank_lines'
  root = data_dir or default_data_dir('corpus')
  if not root:
    raise FileNotFoundError(f'config.corpus.source={source!r}: no corpus folder; set '
                            'config.corpus.data_dir (or $RESEARCH_DATA_DIR, the data root whose '
                            'corpus/ folder holds the corpora)')
  return os.path.join(root, source), documents or corpus.CORPORA[source]


def load_corpus(config, tokenizer, vocab_size: int, global_batch_size: int):
  """(spec, train features, dev examples, dev features, train iterator) of a corpus run.

  Masked-LM objectives get packed sequences (or NSP / SOP pairs) whose masks are drawn
  per epoch on the host (`masking.MaskedBatches`); the dev sample (`dev_sequences`,
  held out by seed) has fixed masks. Causal LM gets bare packed sequences.
  """
  c = config.corpus
  corpus.check_vocab(tokenizer, vocab_size)
  name = c.objective
  pretraining_objective(config)  # fails now for an unknown or unavailable objective
  pairs = name in ('mlm+nsp', 'mlm+sop')

  def build():
    sample = []

    def sampled(documents):  # the first lines, to check the tokenizer fits the text
      for document in documents:
        if len(sample) < tokenizer_fit.SAMPLE:
          sample.extend(line for line in document if line)
        yield document
      tokenizer_fit.check(tokenizer, sample, f'corpus {c.source}')

    documents = sampled(corpus_documents(config))
    if pairs:
      return corpus.pair_features(documents, tokenizer, config.max_length,
                                  task=name[len('mlm+'):], seed=config.seed)
    return list(corpus.pack_sequences(documents, tokenizer, config.max_length,
                                      wrap=name != 'clm'))

  cache_dir = c.cache_dir
  if cache_dir != 'off' and not c.source.startswith(('task:', 'tfds:')):
    # Text files only: their size and mtime say when they change (a task's or TFDS's
    # text is cheap to re-tokenize and has no such stamp).
    path, split = corpus_path(c.source, c.documents, c.data_dir)
    key = corpus_cache.key(
        corpus.text_files(path), tokenizer, split=split, objective=name,
        max_length=config.max_length, max_documents=c.max_documents,
        seed=config.seed if pairs else None)
    features = corpus_cache.cached(cache_dir or corpus_cache.default_dir(), key, build)
  else:
    features = build()
  # At most a tenth of a small corpus (a task's train text) is held out.
  dev_size = min(c.dev_sequences, max(1, len(features) // 10))
  if dev_size < c.dev_sequences:
    logging.info('Holding out %d of %d sequences for evaluation (not dev_sequences=%d)',
                 dev_size, len(features), c.dev_sequences)
  train, dev = corpus.split_dev(features, dev_size, config.seed)
  if config.train_examples:
    train = train[:config.train_examples]
  batches = BatchIterator(
      train, global_batch_size, max_length=config.max_length,
      pad_multiple=config.pad_multiple, shuffle=True, seed=config.seed, drop_remainder=True,
      num_epochs=None, process_index=jax.process_index(),
      process_count=jax.process_count(), pad_id=tokenizer.pad_token_id or 0)
  spec = corpus.CorpusSpec(name=f'{c.source}:{name}',
                           main_metric='accuracy' if name == 'clm' else 'mlm_accuracy')
  if name == 'clm':
    return spec, train, dev, dev, batches
  kw = dict(mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer), rate=c.mask_rate,
            whole_word=c.whole_word)
  if kw['mask_id'] is None:
    raise ValueError('masked-LM pre-training needs a tokenizer with a [MASK] token')
  dev_features = masking.mask_features(dev, config.seed, **kw)
  return spec, train, dev, dev_features, masking.MaskedBatches(batches, seed=config.seed, **kw)
