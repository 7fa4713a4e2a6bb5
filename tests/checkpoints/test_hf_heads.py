"""Fine-tuned Hugging Face heads load with their weights (logits within 1e-4 of
transformers) and export back; a config whose id2label disagrees with the weights is
an error unless the caller names the labels."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from research.checkpoints import hf_heads  # pylint: disable=g-import-not-at-top
from research.checkpoints.hf_load import CheckpointError  # pylint: disable=g-import-not-at-top

TOL = 1e-4
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)


def make(model_type: str, head: str, **overrides):
  """A small random transformers model with a task head, in eval mode."""
  torch.manual_seed(0)
  family = {'bert': 'Bert', 'roberta': 'Roberta', 'distilbert': 'DistilBert',
            'albert': 'Albert'}[model_type]
  if model_type == 'distilbert':
    config = transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4,
                                           hidden_dim=37, max_position_embeddings=64,
                                           **overrides)
  elif model_type == 'roberta':
    config = transformers.RobertaConfig(**{**TINY, 'max_position_embeddings': 66,
                                           'pad_token_id': 1, **overrides})
  elif model_type == 'albert':
    config = transformers.AlbertConfig(**{**TINY, 'embedding_size': 16, **overrides})
  else:
    config = transformers.BertConfig(**{**TINY, **overrides})
  model = getattr(transformers, f'{family}For{head}')(config)
  with torch.no_grad():  # random biases so a skipped or swapped tensor shows
    for name, p in model.named_parameters():
      if name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def batch(rng, pad_id=0):
  ids = rng.integers(3, 99, (3, 11))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  return {'input_ids': np.where(mask == 1, ids, pad_id), 'attention_mask': mask}


def ours(model, params, b):
  out, _ = model.apply({'params': params}, b['input_ids'], b['attention_mask'])
  return out


def theirs(model, b):
  with torch.no_grad():
    return model(**{k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in b.items()})


@pytest.mark.parametrize('model_type', ['bert', 'roberta', 'distilbert', 'albert'])
def test_sequence_classifiers_match_transformers(model_type, tmp_path, rng):
  source = make(model_type, 'SequenceClassification', num_labels=3,
                id2label={0: 'neg', 1: 'neu', 2: 'pos'}, label2id={'neg': 0, 'neu': 1, 'pos': 2})
  source.save_pretrained(tmp_path)
  model, params, labels = hf_heads.load_task_model(str(tmp_path))
  assert labels == ('neg', 'neu', 'pos')
  assert model.objective.kind == 'classification' and model.objective.num_labels == 3
  b = batch(rng, 1 if model_type == 'roberta' else 0)
  np.testing.assert_allclose(ours(model, params, b), theirs(source, b).logits.numpy(), atol=TOL)
  # Export back: transformers reloads every tensor and gives the same logits.
  hf_heads.export_task_model(model, params, tmp_path / 'exported', labels)
  reloaded, info = type(source).from_pretrained(str(tmp_path / 'exported'),
                                                output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert reloaded.config.id2label == {0: 'neg', 1: 'neu', 2: 'pos'}
  np.testing.assert_allclose(theirs(reloaded.eval(), b).logits.numpy(),
                             theirs(source, b).logits.numpy(), atol=1e-6)


def test_regression_token_and_qa_heads(tmp_path, rng):
  b = batch(rng)
  regressor = make('bert', 'SequenceClassification', num_labels=1)
  regressor.save_pretrained(tmp_path / 'reg')
  model, params, _ = hf_heads.load_task_model(str(tmp_path / 'reg'))
  assert model.objective.kind == 'regression'
  np.testing.assert_allclose(ours(model, params, b), theirs(regressor, b).logits.numpy()[:, 0],
                             atol=TOL)
  tagger = make('roberta', 'TokenClassification', num_labels=5)
  tagger.save_pretrained(tmp_path / 'tag')
  model, params, labels = hf_heads.load_task_model(str(tmp_path / 'tag'))
  assert model.objective.kind == 'tagging' and len(labels) == 5
  b1 = batch(rng, 1)
  real = b1['attention_mask'].astype(bool)
  np.testing.assert_allclose(np.asarray(ours(model, params, b1))[real],
                             theirs(tagger, b1).logits.numpy()[real], atol=TOL)
  qa = make('distilbert', 'QuestionAnswering')
  qa.save_pretrained(tmp_path / 'qa')
  model, params, _ = hf_heads.load_task_model(str(tmp_path / 'qa'))
  out, ref = ours(model, params, b), theirs(qa, b)
  assert model.objective.kind == 'span'
  real = b['attention_mask'].astype(bool)
  np.testing.assert_allclose(np.asarray(out['start'])[real], ref.start_logits.numpy()[real],
                             atol=TOL)
  np.testing.assert_allclose(np.asarray(out['end'])[real], ref.end_logits.numpy()[real],
                             atol=TOL)


def test_id2label_disagreeing_with_the_classifier_is_an_error(tmp_path):
  make('bert', 'SequenceClassification', num_labels=3).save_pretrained(tmp_path)
  config = json.loads((tmp_path / 'config.json').read_text())
  config['id2label'] = {'0': 'a', '1': 'b'}
  config['label2id'] = {'a': 0, 'b': 1}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match='2 labels in id2label but the classifier has 3'):
    hf_heads.load_task_model(str(tmp_path))


def test_labels_reorder_to_the_task_and_unmappable_heads_refuse_export(tmp_path, rng):
  source = make('bert', 'SequenceClassification', num_labels=2,
                id2label={0: 'POSITIVE', 1: 'NEGATIVE'}, label2id={'POSITIVE': 0, 'NEGATIVE': 1})
  source.save_pretrained(tmp_path)
  model, params, labels = hf_heads.load_task_model(str(tmp_path))
  reordered = hf_heads.reorder_labels(params, labels, ('negative', 'positive'))
  b = batch(rng)
  np.testing.assert_allclose(ours(model, reordered, b), ours(model, params, b)[:, ::-1],
                             atol=1e-6)
  with pytest.raises(ValueError, match='the task has'):
    hf_heads.reorder_labels(params, labels, ('entailment', 'contradiction'))
  mean_pooled = model.clone(objective=model.objective.replace(pooling='mean'))
  with pytest.raises(ValueError, match="pooling='mean'"):
    hf_heads.export_task_model(mean_pooled, params, tmp_path / 'no')
  make('bert', 'MaskedLM').save_pretrained(tmp_path / 'mlm')
  with pytest.raises(CheckpointError, match='load_pretrained'):
    hf_heads.load_task_model(str(tmp_path / 'mlm'))


def test_evaluate_scores_a_hub_classifier_like_transformers(tmp_path, minilm_folder):
  """research/runs/scoring.py (experiments/evaluate.py --hf_model): the accuracy transformers' own logits give."""
  from research.runs import scoring  # pylint: disable=g-import-not-at-top
  from research.data.sources import load_examples  # pylint: disable=g-import-not-at-top
  from research.testing import write_synthetic_data  # pylint: disable=g-import-not-at-top
  data = write_synthetic_data(tmp_path / 'data', sst2=64)
  source = make('bert', 'SequenceClassification', num_labels=2, vocab_size=30522,
                id2label={0: 'positive', 1: 'negative'},
                label2id={'positive': 0, 'negative': 1})
  source.save_pretrained(tmp_path / 'clf')
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_folder))
  tokenizer.save_pretrained(tmp_path / 'clf')
  scores = scoring.score_hf_model(str(tmp_path / 'clf'), 'sst2', data_dir=data['glue'])
  examples = load_examples('sst2', 'validation', data['glue'])
  encoded = tokenizer([e['text_a'] for e in examples], padding=True, return_tensors='pt')
  with torch.no_grad():
    logits = source(**encoded).logits.numpy()
  # The model's output 0 is 'positive': the task's label 1.
  predicted = 1 - logits.argmax(-1)
  accuracy = 100 * np.mean(predicted == np.array([e['label'] for e in examples]))
  assert scores['accuracy'] == pytest.approx(accuracy)


def test_an_id2label_that_does_not_match_the_classifier_can_be_overridden(tmp_path):
  """A 2-entry id2label over a 50-row classifier: refused with the way past it named,
  and loaded with the caller's label count or names, logits unchanged."""
  source = make('bert', 'SequenceClassification', num_labels=50)
  source.save_pretrained(tmp_path / 'clf')
  config = json.loads((tmp_path / 'clf' / 'config.json').read_text())
  config['id2label'] = {'0': 'neg', '1': 'pos'}
  config['label2id'] = {'neg': 0, 'pos': 1}
  (tmp_path / 'clf' / 'config.json').write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=r'2 labels in id2label but the classifier has 50 '
                                            r'output rows.*num_labels=50.*label_names'):
    hf_heads.load_task_model(str(tmp_path / 'clf'))
  model, params, labels = hf_heads.load_task_model(str(tmp_path / 'clf'), num_labels=50)
  assert labels[:2] == ('LABEL_0', 'LABEL_1') and len(labels) == 50
  names = [f'class_{i}' for i in range(50)]
  _, _, named = hf_heads.load_task_model(str(tmp_path / 'clf'), label_names=names)
  assert named == tuple(names)
  with pytest.raises(CheckpointError, match='3 label.s. given but the classifier has 50'):
    hf_heads.load_task_model(str(tmp_path / 'clf'), label_names=['a', 'b', 'c'])
  ids = np.random.default_rng(0).integers(0, 99, (2, 6))
  mask = np.ones_like(ids)
  with torch.no_grad():
    ref = source.eval()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  logits, _ = model.apply({'params': params}, ids, mask)
  np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4)
