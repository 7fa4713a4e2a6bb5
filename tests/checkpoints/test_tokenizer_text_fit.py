"""Tokenizers that do not fit the text say so (research/data/tokenizer_fit.py), and a
folder whose config.json lacks model_type names that cause."""
from __future__ import annotations

import json
import logging

import pytest

from research.checkpoints import load_tokenizer
from research.checkpoints.hf_load import CheckpointError
from research.data import tokenizer_fit

# A cased WordPiece vocabulary for SMILES-like text: capitals are atoms.
CASED_VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'C', 'O', 'N', 'Cl', '1', '2',
               '(', ')', '=', '#', '##C', '##O', '##N', '##l', '##1', '##2', '##(', '##)',
               '##=', '###']
SMILES = ['CCO', 'CC(=O)O', 'C1CCCCC1', 'CCN(CC)CC', 'ClCCl', 'OC(=O)C1CC1', 'N#CC',
          'CC(C)O', 'COC', 'C1CCOC1'] * 3


def bert_folder(tmp_path, vocab, config=None, tokenizer_config=None):
  """A BERT folder with only vocab.txt for its tokenizer (tokenizer_config.json = {})."""
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(tokenizer_config or {}))
  (tmp_path / 'config.json').write_text(json.dumps(
      config if config is not None else {'model_type': 'bert', 'vocab_size': len(vocab)}))
  return tmp_path


def test_a_lower_casing_tokenizer_over_a_cased_vocabulary_is_reported(tmp_path, caplog):
  tokenizer = load_tokenizer(str(bert_folder(tmp_path, CASED_VOCAB)))
  assert tokenizer_fit.lowercases(tokenizer)  # what a bare vocab.txt folder gives
  with caplog.at_level(logging.WARNING):
    report = tokenizer_fit.check(tokenizer, SMILES, 'corpus smiles.txt')
    assert tokenizer_fit.check(tokenizer, SMILES, 'corpus smiles.txt') is None  # once
  assert report['unk_rate'] > 0.5 and report['lowered_share'] > 0.5
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert 'corpus smiles.txt' in warnings[0] and '% of its tokens are [UNK]' in warnings[0]
  assert 'lower-cases' in warnings[0] and 'do_lower_case=False' in warnings[0]
  assert "E.g. 'CCO' -> ['[UNK]']" in warnings[0]  # the worst examples, with their pieces
  # With case kept, the same text fits: no warning.
  cased = load_tokenizer(str(bert_folder(tmp_path / 'cased', CASED_VOCAB,
                                         tokenizer_config={'do_lower_case': False})))
  assert not tokenizer_fit.lowercases(cased)
  assert tokenizer_fit.check(cased, SMILES, 'corpus smiles.txt') is None
  assert tokenizer_fit.measure(cased, SMILES)['unk_rate'] < 0.03


def test_an_uncased_vocabulary_on_english_text_is_quiet(tok, caplog):
  with caplog.at_level(logging.WARNING):
    assert tokenizer_fit.check(tok, ['A man is playing a guitar.', 'The Stock Market fell.'],
                               'sst2/train') is None
  assert not caplog.records


def test_the_trainer_warns_on_a_corpus_the_tokenizer_turns_into_unk(tmp_path, caplog):
  from research.train import build  # pylint: disable=g-import-not-at-top
  from research.train.defaults import pretraining_defaults  # pylint: disable=g-import-not-at-top
  tokenizer = load_tokenizer(str(bert_folder(tmp_path / 'tok', CASED_VOCAB)))
  corpus = tmp_path / 'smiles.txt'
  corpus.write_text('\n\n'.join(SMILES) + '\n')
  config = pretraining_defaults(str(corpus), 'mlm')
  config.max_length, config.corpus.cache_dir, config.corpus.dev_sequences = 16, 'off', 2
  with caplog.at_level(logging.WARNING):
    build.load_corpus(config, tokenizer, len(CASED_VOCAB), 4)
  assert any('does not fit the text of corpus' in r.getMessage() for r in caplog.records)


def test_a_folder_without_model_type_names_the_cause(tmp_path):
  folder = bert_folder(tmp_path, CASED_VOCAB, config={'vocab_size': len(CASED_VOCAB)})
  with pytest.raises(CheckpointError, match='config.json has no model_type'):
    load_tokenizer(str(folder))
