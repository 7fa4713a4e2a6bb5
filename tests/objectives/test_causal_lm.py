"""CausalLM: shifted next-token loss (parity with transformers), scoring, a few train steps."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import objectives
from research.checkpoints import hf_names
from research.models.config import EncoderConfig
from research.models.encoder import init_params
from research.models.heads import TaskModel
from research.objectives.causal_lm import CausalLM, evaluate_batches, summarize
from research.train.step import TaskLoss, init_state, make_train_step

CONFIG = hf_names.gpt2_config(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                              intermediate_size=32, max_position_embeddings=16,
                              hidden_dropout=0.0, attention_dropout=0.0)


def test_registered_and_checks_config():
  assert isinstance(objectives.make('causal_lm'), CausalLM)
  with pytest.raises(ValueError, match='causal'):
    CausalLM().check(EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                                   intermediate_size=32))
  with pytest.raises(ValueError, match='top'):
    CausalLM().check(CONFIG, 'scalar_mix')


def test_loss_counts_only_real_next_tokens():
  objective = CausalLM()
  ids = jnp.array([[5, 6, 7, 8], [0, 0, 9, 10], [11, 12, 0, 0]])
  mask = jnp.array([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]])  # right and left padding
  logits = jnp.zeros((3, 4, 50)).at[0, 0, 6].set(5.0)  # one confident right guess
  batch = {'input_ids': ids, 'attention_mask': mask}
  loss, count = objective.loss(logits, batch)
  assert float(count) == 3 + 1 + 1
  uniform = math.log(50)
  hit = -jax.nn.log_softmax(jnp.zeros(50).at[6].set(5.0))[6]
  np.testing.assert_allclose(float(loss), (4 * uniform + float(hit)) / 5, rtol=1e-6)
  # Labels override the ids; -100 drops a target.
  labels = ids.at[0, 2].set(-100)
  assert float(objective.count({**batch, 'labels': labels})) == 4
  # Row weights drop padding rows.
  assert float(objective.count({**batch, 'weights': jnp.array([1.0, 0.0, 1.0])})) == 4


def test_loss_matches_transformers(tmp_path, rng):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from research.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, n_inner=32)).eval()
  hf.save_pretrained(tmp_path)
  config, encoder_params = load_pretrained(str(tmp_path))
  ids = rng.integers(0, 50, (2, 10))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  model = TaskModel(config, CausalLM())
  logits, _ = model.apply({'params': {'encoder': encoder_params}}, ids, mask)
  loss, _ = CausalLM().loss(logits, {'input_ids': ids, 'attention_mask': mask})
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
             labels=torch.from_numpy(np.where(mask == 1, ids, -100))).loss
  np.testing.assert_allclose(float(loss), float(ref), atol=1e-5)


def test_score_from_stats_and_from_predictions():
  objective = CausalLM()
  ids = jnp.array([[1, 2, 3]])
  batch = {'input_ids': ids, 'attention_mask': jnp.ones_like(ids)}
  logits = jnp.zeros((1, 3, 50)).at[0, 0, 2].set(9.0)  # predicts 2 after 1, wrong after 2
  stats = jax.tree.map(np.asarray, objective.token_stats(logits, batch))
  scores = objective.score(None, [], [], [{k: v[0] for k, v in stats.items()}])
  assert scores['accuracy'] == pytest.approx(50.0)
  assert scores['perplexity'] == pytest.approx(math.exp(scores['loss']), rel=1e-6)
  features = [{'input_ids': np.array([1, 2, 3]), 'attention_mask': np.ones(3)}]
  accuracy = objective.score(None, [], features, [np.asarray(objective.predict(logits))[0]])
  assert accuracy == {'accuracy': pytest.approx(50.0)}
  with pytest.raises(ValueError, match='no predicted tokens'):
    summarize(0.0, 0.0, 0.0)


def test_train_steps_lower_loss_on_a_repeated_sequence():
  model = TaskModel(CONFIG, CausalLM())
  params = {'encoder': init_params(CONFIG, jax.random.PRNGKey(0))}
  ids = jnp.tile(jnp.array([[3, 7, 11, 19, 23, 29, 31, 37]]), (4, 1))
  batch = {'input_ids': ids, 'attention_mask': jnp.ones_like(ids)}
  tx = optax.adam(1e-2)
  step = jax.jit(make_train_step(model, tx, [TaskLoss(model.objective)]), donate_argnums=0)
  state = init_state(params, tx, seed=0)
  before = evaluate_batches(model, params, [batch])
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  after = evaluate_batches(model, state['params'], [batch])
  assert losses[0] == pytest.approx(before['loss'], rel=1e-5)
  assert after['loss'] < 0.5 * before['loss'], (before, after)
  assert after['accuracy'] > before['accuracy']
  # The trainer's evaluation path (predict_batch per row, then score) agrees.
  from research.train import evaluation  # pylint: disable=g-import-not-at-top
  rows = evaluation.predict_fn(model)(state['params'], batch)
  per_row = [{k: np.asarray(v)[i] for k, v in rows.items()} for i in range(4)]
  scores = model.objective.score(None, [], [], per_row)
  assert scores['loss'] == pytest.approx(after['loss'], rel=1e-5)
  assert scores['perplexity'] == pytest.approx(after['perplexity'], rel=1e-5)
