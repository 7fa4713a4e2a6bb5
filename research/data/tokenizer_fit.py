"""Does a tokenizer fit the text? A warning, once, when it turns the text into [UNK].

    check(tokenizer, texts, 'sst2/train')

A BERT folder with only `vocab.txt` gets a lower-casing WordPiece tokenizer; fed
case-sensitive domain text (SMILES, protein sequences, code) through a cased
vocabulary, most pieces come out as [UNK] and training runs on nothing, silently. On a
sample of the text this measures the share of [UNK] tokens and, when the tokenizer
lower-cases although its vocabulary is cased, the share of letters lower-casing changes;
above `UNK_RATE` or `LOWERED_SHARE` it logs one warning per tokenizer and source with
the rates, two examples and the fix.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

UNK_RATE = 0.03        # more [UNK] than this share of tokens: the text does not fit
LOWERED_SHARE = 0.05   # lower-casing changes more letters than this of a cased vocabulary
CASED_VOCAB = 0.02     # a vocabulary is cased when this share of its pieces has capitals
SAMPLE = 200           # texts tokenized to measure

_WARNED: set[tuple[int, str]] = set()


def texts_of(example: dict) -> list[str]:
  """The text fields of an example: strings, and word lists joined by spaces."""
  out = []
  for value in example.values():
    if isinstance(value, str) and value:
      out.append(value)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
      out.append(' '.join(value))
  return out


def lowercases(tokenizer) -> bool:
  """Whether the tokenizer's normalizer lower-cases its input."""
  normalizer = getattr(getattr(tokenizer, 'backend_tokenizer', None), 'normalizer', None)
  return normalizer is not None and normalizer.normalize_str('Aa') == 'aa'


def cased_share(tokenizer) -> float:
  """Share of the vocabulary's alphabetic pieces that hold a capital letter."""
  pieces = [p.lstrip('#Ġ▁') for p in tokenizer.get_vocab()]
  alpha = [p for p in pieces if p.isalpha()]
  return sum(p != p.lower() for p in alpha) / max(len(alpha), 1)


def measure(tokenizer, texts: Sequence[str]) -> dict[str, Any]:
  """{'unk_rate', 'lowered_share', 'examples' [(text, pieces), worst first]} of `texts`."""
  texts = [t for t in texts if t][:SAMPLE]
  unk = tokenizer.unk_token_id
  tokens = unknown = 0
  scored = []
  for text in texts:
    ids = tokenizer(text, add_special_tokens=False)['input_ids']
    bad = sum(i == unk for i in ids) if unk is not None else 0
    tokens, unknown = tokens + len(ids), unknown + bad
    scored.append((bad / max(len(ids), 1), text, ids))
  letters = sum(c.isalpha() for t in texts for c in t)
  upper = sum(c.isupper() for t in texts for c in t)
  lowered = upper / max(letters, 1) if lowercases(tokenizer) else 0.0
  scored.sort(key=lambda s: -s[0])
  examples = [(text, tokenizer.convert_ids_to_tokens(ids)[:24]) for _, text, ids in scored[:2]]
  return {'unk_rate': unknown / max(tokens, 1), 'lowered_share': lowered,
          'cased_vocab': cased_share(tokenizer), 'examples': examples}


def check(tokenizer, texts: Iterable[str], what: str) -> dict[str, Any] | None:
  """Measures `texts` (a sample is enough) and warns once per tokenizer and `what`
  when they do not fit; returns the measurement when it warned."""
  key = (id(tokenizer), what)
  if key in _WARNED:
    return None
  report = measure(tokenizer, list(texts))
  lowering = (report['lowered_share'] > LOWERED_SHARE
              and report['cased_vocab'] > CASED_VOCAB)
  if report['unk_rate'] <= UNK_RATE and not lowering:
    return None
  _WARNED.add(key)
  problems = []
  if report['unk_rate'] > UNK_RATE:
    problems.append(f"{100 * report['unk_rate']:.1f} % of its tokens are "
                    f"{tokenizer.unk_token}")
  if lowering:
    problems.append(f"the tokenizer lower-cases, which changes "
                    f"{100 * report['lowered_share']:.0f} % of the letters, while "
                    f"{100 * report['cased_vocab']:.0f} % of the vocabulary's pieces are cased")
  shown = '; '.join(f'{text[:80]!r} -> {pieces}' for text, pieces in report['examples'])
  logging.warning(
      'The tokenizer does not fit the text of %s: %s. E.g. %s. Fix: keep case with '
      'do_lower_case=False (tokenizer_config.json; a folder with only vocab.txt '
      'lower-cases by default), or use a tokenizer whose vocabulary covers this text.',
      what, ' and '.join(problems), shown)
  return report
