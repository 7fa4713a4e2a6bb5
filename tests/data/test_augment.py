"""TinyBERT augmentation (candidates from a masked LM) and the TSV writer it feeds."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from research.data import augment, glue_tsv, tasks


@pytest.mark.parametrize('task, example', [
    ('sst2', {'text_a': 'a "quoted" film , with tabs\tinside ', 'label': 1}),
    ('cola', {'text_a': 'the book was read .', 'label': 0}),
    ('mrpc', {'text_a': 'one side .', 'text_b': 'the other side .', 'label': 1}),
    ('stsb', {'text_a': 'a man plays .', 'text_b': 'a man is playing .', 'label': 3.25}),
    ('mnli', {'text_a': 'premise here .', 'text_b': 'hypothesis .', 'label': 2}),
])
def test_written_tsv_reads_back(tmp_path, task, example):
  spec = tasks.get_task(task)
  path = tmp_path / 'train.tsv'
  assert glue_tsv.write_glue_tsv(path, spec, [example, example]) == 2
  back = list(glue_tsv.read_glue_tsv(path, spec))
  assert len(back) == 2 and back[1]['idx'] == 1
  assert back[0]['text_a'] == example['text_a'].replace('\t', ' ')
  assert back[0].get('text_b') == example.get('text_b')
  assert back[0]['label'] == pytest.approx(example['label'])


def test_writer_refuses_what_the_format_cannot_hold(tmp_path):
  with pytest.raises(ValueError, match='outside'):
    glue_tsv.write_glue_tsv(tmp_path / 'x.tsv', tasks.get_task('sst2'),
                            [{'text_a': 'fine', 'label': 2}])
  with pytest.raises(ValueError, match='empty text'):
    glue_tsv.write_glue_tsv(tmp_path / 'x.tsv', tasks.get_task('sst2'),
                            [{'text_a': ' \n', 'label': 0}])
  with pytest.raises(ValueError, match='not a GLUE TSV task'):
    glue_tsv.write_glue_tsv(tmp_path / 'x.tsv', tasks.get_task('conll2003'), [])


CANDIDATES = ('apple', 'river', 'green', 'stone', 'quiet')


def fake_mlm(tok):
  """A 'masked LM' that ranks CANDIDATES first, but puts a continuation piece, a special
  token and the masked word's own id above them: those must be filtered out."""
  vocab = len(tok)
  ranked = tok.convert_tokens_to_ids(list(CANDIDATES))
  banned = tok.convert_tokens_to_ids(['##ing', '[SEP]'])
  base = np.zeros(vocab, np.float32)
  base[ranked] = np.linspace(10, 6, len(ranked))
  base[banned] = 20.0
  base = jnp.asarray(base)

  def logits_at(params, ids, mask, positions):
    del params, mask
    rows = jnp.arange(ids.shape[0])
    # The masked slot holds [MASK]; the original word would score 30 if it were visible.
    own = jnp.where(ids[rows, positions[:, 0]] == tok.mask_token_id, 0, 1)
    logits = jnp.broadcast_to(base, (ids.shape[0], vocab)) + 30.0 * own[:, None]
    return logits[:, None, :]
  return logits_at


def test_single_piece_words_get_filtered_candidates(tok):
  text = 'The flabbergasted cat sat, quietly.'
  assert len(tok.tokenize('flabbergasted')) > 1  # the premise: a multi-piece word
  words = augment.propose([text], tok, fake_mlm(tok), None, top_k=3)[0]
  spans = {text[w.start:w.end]: w for w in words}
  assert spans['flabbergasted'].piece is None and spans['flabbergasted'].candidates == []
  assert spans['cat'].candidates == ['apple', 'river', 'green']
  # A word that is itself a candidate is not proposed for itself.
  own = augment.propose(['apple pie'], tok, fake_mlm(tok), None, top_k=3)[0]
  assert own[0].candidates == ['river', 'green', 'stone']


def test_copies_edit_words_in_place_and_keep_the_rest(tok):
  examples = [{'idx': 7, 'text_a': 'The flabbergasted cat sat.', 'text_b': 'A dog ran!',
               'label': 1}]
  copies = augment.augment_examples(examples, tok, fake_mlm(tok), None, per_example=6,
                                    replace_prob=1.0, top_k=3, seed=0)
  assert 1 <= len(copies) <= 6 and len({(c['text_a'], c['text_b']) for c in copies}) == len(copies)
  for copy in copies:
    assert 'label' not in copy and 'idx' not in copy and copy['source_idx'] == 0
    words = copy['text_a'].replace('.', ' . ').split()
    assert words[1] == 'flabbergasted' and words[0] in CANDIDATES[:3]
    assert copy['text_b'].split()[0] in CANDIDATES[:3]
  again = augment.augment_examples(examples, tok, fake_mlm(tok), None, per_example=6,
                                   replace_prob=1.0, top_k=3, seed=0)
  assert again == copies  # the seed decides the draws
  rare = augment.augment_examples(examples, tok, fake_mlm(tok), None, per_example=40,
                                  replace_prob=0.1, top_k=3, seed=1)
  changed = np.mean([sum(a != b for a, b in zip(c['text_a'].split(), 'The flabbergasted cat '
                                                 'sat.'.split())) for c in rare])
  assert changed < 2.5  # about one word in ten of the replaceable ones per copy


def test_bad_settings_are_named(tok):
  examples = [{'text_a': 'a b', 'label': 0}]
  with pytest.raises(ValueError, match='replace_prob'):
    augment.augment_examples(examples, tok, fake_mlm(tok), None, replace_prob=0.0)
  with pytest.raises(ValueError, match='per_example'):
    augment.augment_examples(examples, tok, fake_mlm(tok), None, per_example=0)
  with pytest.raises(ValueError, match='text_a'):
    augment.augment_examples([{'tokens': ['a']}], tok, fake_mlm(tok), None)
