"""Tests of research.evaluate.metrics against hand-computed values."""

import math

import numpy as np
import pytest

from research.data import tasks
from research.evaluate import metrics

PRED = [1, 0, 1, 1, 0]
GOLD = [1, 1, 0, 1, 0]  # tp=2 tn=1 fp=1 fn=1


def test_accuracy_f1_matthews_by_hand():
  assert metrics.accuracy(PRED, GOLD) == pytest.approx(3 / 5)
  assert metrics.f1_binary(PRED, GOLD) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
  # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 1 / sqrt(36).
  assert metrics.matthews_corr(PRED, GOLD) == pytest.approx(1 / 6)
  assert metrics.matthews_corr([1, 1, 1], [1, 0, 1]) == 0.0  # Undefined.
  assert metrics.matthews_corr([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1)
  assert metrics.f1_binary([0, 0], [1, 0]) == 0.0


def test_pearson_by_hand():
  # dx = (-1, 0, 1), dy = (-4/3, -1/3, 5/3): cov 3, var 2 and 42/9.
  assert metrics.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(
      3 / math.sqrt(2 * 42 / 9))
  assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_spearman_with_ties_by_hand():
  np.testing.assert_array_equal(metrics.rank([1, 2, 2, 3]), [1, 2.5, 2.5, 4])
  np.testing.assert_array_equal(metrics.rank([3, 1, 3, 3]), [3, 1, 3, 3])
  # Ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): cov 4.5, var 4.5 and 5.
  assert metrics.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(
      4.5 / math.sqrt(4.5 * 5))
  assert metrics.spearman([1, 5, 9], [0.1, 0.2, 100]) == pytest.approx(1.0)


def test_spearman_agrees_with_scipy_when_available():
  stats = pytest.importorskip('scipy.stats')
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 6, 200), rng.normal(size=200)
  assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


def test_input_validation():
  with pytest.raises(ValueError, match='same length'):
    metrics.accuracy([1, 0], [1])
  with pytest.raises(ValueError, match='no predictions'):
    metrics.pearson([], [])


def test_entity_chunks_follow_conlleval():
  assert metrics.entities(['B-PER', 'I-PER', 'O', 'B-LOC']) == {
      ('PER', 0, 1), ('LOC', 3, 3)}
  assert metrics.entities(['O', 'I-PER', 'I-PER']) == {('PER', 1, 2)}
  assert metrics.entities(['B-PER', 'I-LOC']) == {('PER', 0, 0),
                                                  ('LOC', 1, 1)}
  assert metrics.entities(['B-PER', 'B-PER']) == {('PER', 0, 0),
                                                  ('PER', 1, 1)}
  assert metrics.entities(['I-ORG', 'O', 'I-ORG', 'I-ORG']) == {
      ('ORG', 0, 0), ('ORG', 2, 3)}
  with pytest.raises(ValueError, match='not IOB2'):
    metrics.entities(['S-PER'])


def test_entity_scores_seqeval_readme_example():
  gold = [['O', 'O', 'O', 'B-MISC', 'I-MISC', 'I-MISC', 'O'],
          ['B-PER', 'I-PER', 'O']]
  pred = [['O', 'O', 'B-MISC', 'I-MISC', 'I-MISC', 'I-MISC', 'O'],
          ['B-PER', 'I-PER', 'O']]
  scores = metrics.entity_scores(pred, gold)
  assert scores == {'entity_precision': 0.5, 'entity_recall': 0.5,
                    'entity_f1': 0.5}


def test_entity_partial_match_is_wrong_and_counts_by_hand():
  gold = [['B-PER', 'I-PER', 'O', 'B-ORG', 'O', 'B-LOC']]
  pred = [['B-PER', 'O', 'O', 'B-ORG', 'O', 'O']]
  # Gold: PER(0-1), ORG(3), LOC(5); predicted: PER(0), ORG(3); 1 correct.
  scores = metrics.entity_scores(pred, gold)
  assert scores['entity_precision'] == pytest.approx(1 / 2)
  assert scores['entity_recall'] == pytest.approx(1 / 3)
  assert scores['entity_f1'] == pytest.approx(2 * (1 / 2) * (1 / 3) / (5 / 6))


def test_squad_normalisation():
  assert metrics.normalize_answer('The  Quick, brown fox!') == 'quick brown fox'
  assert metrics.normalize_answer('an apple') == 'apple'
  assert metrics.normalize_answer('theater  A') == 'theater'
  assert metrics.normalize_answer("Denver Broncos'") == 'denver broncos'
  assert metrics.normalize_answer('a-b') == 'ab'


def test_squad_scores_by_hand():
  references = {'q1': ['cat sat on mat', 'a dog'], 'q2': ['Denver Broncos'],
                'q3': ['1990']}
  predictions = {'q1': 'the cat sat', 'q2': 'denver broncos.'}
  scores = metrics.squad_scores(predictions, references)
  # q1: F1 vs 'cat sat on mat' = 2*1*0.5/1.5; q2 exact; q3 missing = 0.
  assert scores['exact_match'] == pytest.approx(1 / 3)
  assert scores['squad_f1'] == pytest.approx((2 / 3 + 1) / 3)


def test_compute_in_percent_from_a_spec():
  assert metrics.compute(tasks.get_task('mrpc'), PRED, GOLD) == {
      'f1': pytest.approx(100 * 2 / 3), 'accuracy': pytest.approx(60.0)}
  cola = metrics.compute(tasks.get_task('cola'), PRED, GOLD)
  assert list(cola) == ['matthews_corr', 'accuracy']
  assert cola['matthews_corr'] == pytest.approx(100 / 6)
  stsb = metrics.compute(tasks.get_task('stsb'), [1, 2, 3], [1, 2, 4])
  assert stsb['spearman'] == pytest.approx(100.0)
  assert metrics.compute('accuracy', [1], [1]) == {'accuracy': 100.0}


def test_compute_tagging_with_ids_and_ignored_positions():
  spec = tasks.get_task('conll2003')  # 1=B-PER 2=I-PER 5=B-LOC
  references = [[-100, 1, 2, -100, 0, 5, -100]]
  predictions = [[0, 1, 2, 2, 0, 0, 0]]
  scores = metrics.compute(spec, predictions, references)
  assert scores == {'entity_f1': pytest.approx(100 * 2 / 3),
                    'entity_precision': 100.0, 'entity_recall': 50.0}
  with pytest.raises(ValueError, match='integer tags need a TaskSpec'):
    metrics.compute(['entity_f1'], predictions, references)


def test_compute_squad_with_examples_and_unknown_metric():
  examples = [{'id': 'a', 'answers': {'text': ['Paris', 'in Paris'],
                                      'answer_start': [0, 0]}}]
  assert metrics.compute(tasks.get_task('squad'), {'a': 'in paris'},
                         examples) == {'exact_match': 100.0,
                                       'squad_f1': 100.0}
  with pytest.raises(ValueError, match="unknown metric names \\['bleu'\\]"):
    metrics.compute(['accuracy', 'bleu'], [1], [1])
