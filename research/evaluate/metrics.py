"""Task metrics in plain numpy: GLUE, CoNLL NER (entity level) and SQuAD v1.1.

The single-metric functions return raw values (fractions in [0, 1],
correlations in [-1, 1]). `compute` returns a dict of named floats **in percent**
(every value x 100, also correlations), the convention of the GLUE and SQuAD
leaderboards and of the papers this repo reproduces.

Metric names understood by `compute`:
  accuracy, f1 (binary, positive class 1), matthews_corr, pearson, spearman,
  entity_f1, entity_precision, entity_recall (IOB2, seqeval / conlleval
  semantics), exact_match, squad_f1 (official SQuAD v1.1 script semantics).

Example:
  >>> compute(tasks.get_task('mrpc'), [1, 0, 1], [1, 1, 1])
  {'f1': 80.0, 'accuracy': 66.66666666666667}
"""

import collections
import re
import string
from typing import Callable, Mapping, Sequence, Union

import numpy as np

# Reference tag of tokens without a label (as in research.data.tokenize).
IGNORE_INDEX = -100


def accuracy(predictions, references) -> float:
  """Fraction of predictions equal to their reference."""
  p, r = _pair(predictions, references)
  return float(np.mean(p == r))


def f1_binary(predictions, references, positive=1) -> float:
  """F1 of the positive class (0.0 when there are no true positives)."""
  p, r = _pair(predictions, references)
  tp = np.sum((p == positive) & (r == positive))
  fp = np.sum((p == positive) & (r != positive))
  fn = np.sum((p != positive) & (r == positive))
  return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def matthews_corr(predictions, references) -> float:
  """Matthews correlation coefficient for binary labels (0.0 if undefined)."""
  p, r = _pair(predictions, references)
  p, r = (p == 1).astype(np.float64), (r == 1).astype(np.float64)
  tp, tn = np.sum(p * r), np.sum((1 - p) * (1 - r))
  fp, fn = np.sum(p * (1 - r)), np.sum((1 - p) * r)
  denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def pearson(predictions, references) -> float:
  """Pearson correlation (0.0 if either side is constant)."""
  p, r = _pair(predictions, references, np.float64)
  p, r = p - p.mean(), r - r.mean()
  denominator = np.sqrt(np.sum(p * p) * np.sum(r * r))
  return float(np.sum(p * r) / denominator) if denominator else 0.0


def rank(values) -> np.ndarray:
  """1-based ranks; tied values get the average of their ranks."""
  values = np.asarray(values)
  order = np.argsort(values, kind='stable')
  ranks = np.empty(len(values), np.float64)
  sorted_values = values[order]
  start = 0
  for end in range(1, len(values) + 1):
    if end == len(values) or sorted_values[end] != sorted_values[start]:
      ranks[order[start:end]] = (start + end + 1) / 2  # mean of start+1..end
      start = end
  return ranks


def spearman(predictions, references) -> float:
  """Spearman correlation: Pearson of the tie-averaged ranks."""
  p, r = _pair(predictions, references, np.float64)
  return pearson(rank(p), rank(r))


def _pair(predictions, references, dtype=None):
  p, r = np.asarray(predictions, dtype), np.asarray(references, dtype)
  if p.shape != r.shape or p.ndim != 1:
    raise ValueError(f'predictions {p.shape} and references {r.shape} must be '
                     'two 1-D arrays of the same length')
  if not len(p):
    raise ValueError('no predictions to score')
  return p, r


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
  """Entity chunks of one IOB2 tag sequence as (type, start, end) inclusive.

  conlleval / seqeval (default mode) semantics: a chunk starts at a B- tag, at
  an I- tag that follows O or a tag of another type, and ends before the next
  tag that starts a chunk, an O, or a tag of another type.
  """
  found, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ['O']):
    prefix, _, tag_type = tag.partition('-')
    if prefix not in ('B', 'I', 'O'):
      raise ValueError(f'tag {tag!r} is not IOB2 (B-X, I-X or O)')
    starts = prefix == 'B' or (prefix == 'I' and tag_type != kind)
    if kind is not None and (prefix == 'O' or starts):
      found.add((kind, start, i - 1))
      kind = None
    if starts:
      start, kind = i, tag_type
  return found


def entity_scores(predictions: Sequence[Sequence[str]],
                  references: Sequence[Sequence[str]]) -> dict[str, float]:
  """Micro entity precision / recall / F1 over sentences of IOB2 tags.

  Returns:
    {'entity_precision', 'entity_recall', 'entity_f1'} as fractions.
  """
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predicted vs {len(references)} '
                     'reference sentences')
  correct = num_predicted = num_gold = 0
  for i, (pred, gold) in enumerate(zip(predictions, references)):
    if len(pred) != len(gold):
      raise ValueError(f'sentence {i}: {len(pred)} predicted vs {len(gold)} '
                       'reference tags')
    pred_chunks, gold_chunks = entities(pred), entities(gold)
    correct += len(pred_chunks & gold_chunks)
    num_predicted += len(pred_chunks)
    num_gold += len(gold_chunks)
  precision = correct / num_predicted if num_predicted else 0.0
  recall = correct / num_gold if num_gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
  return {'entity_precision': precision, 'entity_recall': recall,
          'entity_f1': f1}


def normalize_answer(text: str) -> str:
  """SQuAD v1.1 normalisation: lowercase, drop punctuation and a/an/the,
  collapse whitespace."""
  text = ''.join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def _token_f1(prediction: str, gold: str) -> float:
  pred_tokens = normalize_answer(prediction).split()
  gold_tokens = normalize_answer(gold).split()
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  same = sum(common.values())
  if not same:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str],
                 references: Mapping[str, Sequence[str]]) -> dict[str, float]:
  """SQuAD v1.1 exact match and token F1, max over gold answers.

  Args:
    predictions: {question id: predicted answer text}.
    references: {question id: list of gold answer texts}; every reference id
      is scored; a missing prediction counts as wrong (as in the official
      script).

  Returns:
    {'exact_match', 'squad_f1'} as fractions.
  """
  if not references:
    raise ValueError('no references to score')
  exact = f1 = 0.0
  for qid, golds in references.items():
    if qid not in predictions:
      continue
    pred = predictions[qid]
    exact += max(float(normalize_answer(pred) == normalize_answer(g))
                 for g in golds)
    f1 += max(_token_f1(pred, g) for g in golds)
  return {'exact_match': exact / len(references),
          'squad_f1': f1 / len(references)}


_SIMPLE: dict[str, Callable] = {
    'accuracy': accuracy, 'f1': f1_binary, 'matthews_corr': matthews_corr,
    'pearson': pearson, 'spearman': spearman}
_ENTITY = ('entity_f1', 'entity_precision', 'entity_recall')
_SQUAD = ('exact_match', 'squad_f1')
METRICS = tuple(_SIMPLE) + _ENTITY + _SQUAD


def _tag_names(predictions, references, label_names):
  """Maps int tag sequences to names, dropping positions whose reference is
  -100 (sub-tokens that carry no label); string sequences pass unchanged."""

  def name(tag):
    if isinstance(tag, str):
      return tag
    if not label_names:
      raise ValueError('integer tags need a TaskSpec with label_names; pass '
                       'the spec or tag strings')
    return label_names[int(tag)]

  preds, refs = [], []
  for pred, ref in zip(predictions, references):
    keep = [i for i, tag in enumerate(ref)
            if isinstance(tag, str) or int(tag) != IGNORE_INDEX]
    preds.append([name(pred[i]) for i in keep] if len(pred) >= len(ref)
                 else list(map(name, pred)))
    refs.append([name(ref[i]) for i in keep])
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predicted vs {len(references)} '
                     'reference sentences')
  return preds, refs


def _squad_references(references) -> dict[str, list[str]]:
  """Accepts {id: [texts]} or a list of SQuAD examples."""
  if isinstance(references, Mapping):
    return {k: list(v) for k, v in references.items()}
  return {ex['id']: list(ex['answers']['text']) for ex in references}


def compute(task_or_metrics: Union[object, Sequence[str]], predictions,
            references) -> dict[str, float]:
  """Computes a task's metrics, in percent.

  Args:
    task_or_metrics: a `TaskSpec` (its `metrics` and `label_names` are used) or
      a list of metric names from METRICS.
    predictions: class ids / scores (1-D), tag sequences (ids or names), or
      {id: answer text} for SQuAD.
    references: the same layout as predictions; SQuAD: {id: [gold texts]} or
      the list of examples.

  Returns:
    {metric name: value x 100} in the order of the requested names.

  Raises:
    ValueError: for an unknown metric name or mismatched inputs.
  """
  names = getattr(task_or_metrics, 'metrics', task_or_metrics)
  if isinstance(names, str):
    names = (names,)
  unknown = [n for n in names if n not in METRICS]
  if unknown:
    raise ValueError(f'unknown metric names {unknown}; known: {list(METRICS)}')
  label_names = tuple(getattr(task_or_metrics, 'label_names', ()))
  results = {}
  if any(n in _ENTITY for n in names):
    results.update(entity_scores(*_tag_names(predictions, references,
                                             label_names)))
  if any(n in _SQUAD for n in names):
    results.update(squad_scores(predictions, _squad_references(references)))
  for name in names:
    if name in _SIMPLE:
      results[name] = _SIMPLE[name](predictions, references)
  return {name: 100.0 * float(results[name]) for name in names}
