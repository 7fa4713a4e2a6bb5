"""Architecture choice for generation: an MLM encoder against a GPT-style decoder.

    result = run(defaults(), 'runs/encoder_vs_decoder')

Writes the training documents to out/corpus/train.txt (the held-out tail stays out of
both runs), trains out/encoder (masked LM) and out/decoder (causal LM) with the same
budget (each reused when the study is rerun with the same settings, `study.py`), scores
the held-out text (perplexity for the decoder, pseudo-perplexity for the encoder),
generates from the same prompts with both, and writes results.md, results.json and
samples.md to `out`; the result holds the samples side by side ('samples_text').
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from research.checkpoints import load_tokenizer
from research.data import corpus as corpus_lib
from research.evaluate import lm_perplexity, speed
from research.models import generate as gen
from research.models import mask_predict
from research.models.sizes import count_params
from research.objectives import masked_lm
from research.runs import study
from research.train import build, saved_runs, source
from research.train import defaults as trainer_schema

SIZES = {
    # (shared scratch architecture, steps, batch, max_length)
    'cpu': ('num_layers=4,hidden_size=256,num_heads=4,intermediate_size=1024', 500, 32, 64),
    'full': ('num_layers=6,hidden_size=512,num_heads=8,intermediate_size=2048', 10000, 64,
             128),
}


def defaults(size: str = 'cpu') -> ml_collections.ConfigDict:
  """The study's settings at `size` ('cpu' | 'full'; experiments/configs/encoder_vs_decoder.py)."""
  if size not in SIZES:
    raise ValueError(f'size={size!r}; expected one of {sorted(SIZES)}')
  scratch, steps, batch, max_length = SIZES[size]
  c = ml_collections.ConfigDict()
  c.model = 'minilm-l6'    # tokenizer and architecture family (weights unused)
  c.scratch = scratch + ',use_pooler=False'   # no NSP/SOP head reads a pooler here
  c.decoder = 'causal=True,norm_position=pre,embedding_norm=False'
  c.corpus = 'tinyshakespeare'   # a staged corpus name, or a .txt file or folder
  c.documents = ''         # 'blank_lines' | 'file' | '' = the staged corpus's own
  c.heldout_share = 0.05   # the corpus's last documents, held out of both training sets
  c.steps = steps
  c.batch_size = batch
  c.max_length = max_length
  c.learning_rate = 1e-3
  c.warmup_ratio = 0.1
  c.dev_sequences = 64     # each run's own dev sample (from its training documents)
  c.eval_sequences = 128   # held-out chunks scored (of max_length - 2 tokens each)
  c.num_prompts = 4        # held-out chunks whose first tokens are the prompts
  c.prompt_tokens = 8
  c.max_new_tokens = 32
  c.temperature = 1.0
  c.top_k = 40
  c.top_p = 1.0
  c.seed = 0
  return c


KINDS = ('encoder', 'decoder')


def check(config) -> None:
  """Fails before any training on values the study cannot use."""
  if not 0.0 < config.heldout_share < 0.5:
    raise ValueError(f'heldout_share must be in (0, 0.5), got {config.heldout_share}')
  if source.scratch_fields(config.decoder).get('causal') is not True:
    raise ValueError(f"config.decoder={config.decoder!r} must make the model causal "
                     "('causal=True,...')")
  for name in ('steps', 'batch_size', 'eval_sequences', 'num_prompts', 'prompt_tokens',
               'max_new_tokens'):
    if config[name] < 1:
      raise ValueError(f'config.{name} must be >= 1, got {config[name]}')
  if config.num_prompts > config.eval_sequences:
    raise ValueError(f'num_prompts={config.num_prompts} exceeds eval_sequences='
                     f'{config.eval_sequences} (prompts are held-out chunks)')
  if config.prompt_tokens + config.max_new_tokens + 2 > config.max_length:
    raise ValueError(f'prompt_tokens + max_new_tokens + 2 = '
                     f'{config.prompt_tokens + config.max_new_tokens + 2} exceeds max_length='
                     f'{config.max_length}, the longest sequence either model trained on')


def split_corpus(config, out: str) -> tuple[str, list]:
  """(path of the training documents written under out/corpus, held-out documents)."""
  path, split = build.corpus_path(config.corpus, config.documents)
  documents = list(corpus_lib.read_documents(path, split))
  held = max(1, int(round(len(documents) * config.heldout_share)))
  if len(documents) - held < 1:
    raise ValueError(f'corpus {path} has {len(documents)} document(s): too few to hold out '
                     f'{config.heldout_share:.0%} and train on the rest')
  folder = os.path.join(out, 'corpus')
  os.makedirs(folder, exist_ok=True)
  train_path = os.path.join(folder, 'train.txt')
  text = '\n\n'.join('\n'.join(doc) for doc in documents[:-held]) + '\n'
  if not os.path.isfile(train_path) or open(train_path, encoding='utf-8').read() != text:
    with open(train_path, 'w', encoding='utf-8') as f:
      f.write(text)
  return train_path, documents[-held:]


def trainer_config(config, kind: str, train_path: str):
  """The pre-training run of `kind`: everything but the objective and block shared."""
  objective = 'mlm' if kind == 'encoder' else 'clm'
  c = trainer_schema.pretraining_defaults(train_path, objective)
  c.corpus.documents = 'blank_lines'  # how split_corpus wrote them
  c.corpus.dev_sequences = config.dev_sequences
  c.model, c.seed = config.model, config.seed
  c.scratch = config.scratch + (',' + config.decoder if kind == 'decoder' else '')
  c.max_length = c.pad_multiple = config.max_length
  c.batch_size = config.batch_size
  c.total_steps = config.steps
  c.eval_every = c.checkpoint_every = config.steps
  c.log_every = max(1, min(50, config.steps // 10))
  c.optimizer.learning_rate = config.learning_rate
  c.optimizer.warmup_ratio = config.warmup_ratio
  return c


def heldout_chunks(documents: Sequence, tokenizer, length: int, count: int) -> list[np.ndarray]:
  """Up to `count` full chunks of `length` bare tokens of the held-out documents."""
  chunks = [f['input_ids'] for f in corpus_lib.pack_sequences(documents, tokenizer, length,
                                                              wrap=False)]
  chunks = [np.asarray(c, np.int32) for c in chunks if len(c) == length][:count]
  if not chunks:
    raise ValueError(f'the held-out documents hold no full chunk of {length} tokens: raise '
                     'heldout_share or lower max_length')
  return chunks


class Scorer:
  """The jittable functions of one saved run (kept alive so jit caches hold)."""

  def __init__(self, workdir: str):
    self.run = saved_runs.load_run(workdir, 'best')
    model = self.run.model

    def logits(params, ids, mask):
      return model.apply({'params': params}, ids, mask, None, deterministic=True)[0]

    self.logits = logits
    if isinstance(model.objective, masked_lm.MaskedLM):
      self.logits_at = masked_lm.logits_at_fn(model)


def distinct_2(rows: Sequence[Sequence[int]]) -> float:
  """Unique token bigrams / all bigrams over the generated rows (1 = no repetition)."""
  bigrams = [tuple(row[i:i + 2]) for row in rows for i in range(len(row) - 1)]
  return len(set(bigrams)) / len(bigrams) if bigrams else float('nan')


def generate_both(config, scorers: dict, tokenizer, prompts: list[np.ndarray]) -> dict:
  """{kind: {'tokens' [rows of ids], 'tokens_per_s', 'first_call_seconds'}}."""
  sampling = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                  rng=jax.random.PRNGKey(config.seed))
  out = {}
  decoder = scorers['decoder'].run
  ids, mask = gen.left_pad([p.tolist() for p in prompts], tokenizer.pad_token_id)
  result, seconds, first = speed.timed_twice(lambda: gen.generate(
      decoder.model.encoder, decoder.params['encoder'], ids, mask,
      max_new_tokens=config.max_new_tokens, **sampling).tokens)
  out['decoder'] = (np.asarray(result), seconds, first)
  encoder = scorers['encoder']
  ids, lengths = mask_predict.right_pad([[tokenizer.cls_token_id] + p.tolist() for p in prompts],
                                        tokenizer.pad_token_id)
  result, seconds, first = speed.timed_twice(lambda: mask_predict.mask_predict(
      encoder.logits_at, encoder.run.params, ids, lengths,
      max_new_tokens=config.max_new_tokens, mask_id=tokenizer.mask_token_id,
      sep_id=tokenizer.sep_token_id, banned=tokenizer.all_special_ids,
      max_positions=encoder.run.model.encoder.max_length, **sampling))
  out['encoder'] = (np.asarray(result), seconds, first)
  return {kind: {'tokens': tokens.tolist(),
                 'tokens_per_s': tokens.size / seconds, 'first_call_seconds': first}
          for kind, (tokens, seconds, first) in out.items()}


def markdown(rows: dict, samples: list[dict]) -> tuple[str, str]:
  """(results table, samples side by side) in markdown."""
  head = ('| model | parameters | pre-training wall (s) | held-out measure | value | '
          'generated tokens/s | distinct-2 |\n|---|---:|---:|---|---:|---:|---:|\n')
  lines = [f'| {r["label"]} | {r["params"]:,} | {r["wall_seconds"]:.0f} | {r["measure"]} | '
           f'{r["value"]:.1f} | {r["tokens_per_s"]:.1f} | {r["distinct_2"]:.3f} |'
           for r in rows.values()]
  table = head + '\n'.join(lines) + (
      '\n\nPerplexity (decoder, each token given the ones before it) and pseudo-perplexity '
      '(encoder, each token masked in turn and predicted from both sides) are different '
      'measures: compare each only with models of its own kind.\n')
  text = ['| prompt | decoder (cached, left to right) | encoder (iterative mask prediction) |',
          '|---|---|---|']
  for s in samples:
    cells = [s[k].replace('|', '\\|').replace('\n', ' ') for k in ('prompt', 'decoder',
                                                                     'encoder')]
    text.append('| ' + ' | '.join(cells) + ' |')
  return table, '\n'.join(text) + '\n'


def run(config, out: str, command: str = '') -> dict[str, Any]:
  check(config)
  os.makedirs(out, exist_ok=True)
  train_path, heldout = split_corpus(config, out)
  labels = {'encoder': 'encoder + MLM head (BERT block)',
            'decoder': 'decoder, causal LM (GPT-2 block)'}
  trained = {}
  for kind in KINDS:
    trained[kind] = study.run_or_reuse(
        trainer_config(config, kind, train_path), os.path.join(out, kind),
        lambda result: {'final': {k: float(v) for k, v in result.get('final', {}).items()},
                        **({'diverged': result['diverged']} if 'diverged' in result else {})})
    if 'diverged' in trained[kind]:
      raise FloatingPointError(f'the {kind} run diverged: {trained[kind]["diverged"]}')
  scorers = {kind: Scorer(os.path.join(out, kind)) for kind in KINDS}
  tokenizer = load_tokenizer(config.model)
  chunks = heldout_chunks(heldout, tokenizer, config.max_length - 2, config.eval_sequences)
  measures = {
      'decoder': ('perplexity', lm_perplexity.causal_perplexity(
          scorers['decoder'].logits, scorers['decoder'].run.params, chunks)),
      'encoder': ('pseudo-perplexity', lm_perplexity.pseudo_perplexity(
          scorers['encoder'].logits_at, scorers['encoder'].run.params, chunks,
          cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
          mask_id=tokenizer.mask_token_id)),
  }
  count = min(config.num_prompts, len(chunks))  # spread over the held-out chunks
  prompts = [chunks[i * len(chunks) // count][:config.prompt_tokens] for i in range(count)]
  generated = generate_both(config, scorers, tokenizer, prompts)
  rows = {}
  for kind in KINDS:
    measure, value = measures[kind]
    rows[kind] = {
        'label': labels[kind], 'params': count_params(scorers[kind].run.params),
        'wall_seconds': trained[kind]['wall_seconds'], 'dev': trained[kind]['final'],
        'measure': f'held-out {measure}', 'value': value['perplexity'],
        'heldout_nll': value['nll'], 'heldout_tokens': value['tokens'],
        'tokens_per_s': generated[kind]['tokens_per_s'],
        'first_call_seconds': generated[kind]['first_call_seconds'],
        'distinct_2': distinct_2(generated[kind]['tokens'])}
  samples = [{'prompt': tokenizer.decode(p.tolist()),
              **{kind: tokenizer.decode(generated[kind]['tokens'][i]) for kind in KINDS}}
             for i, p in enumerate(prompts)]
  table, sample_text = markdown(rows, samples)
  with open(os.path.join(out, 'samples.md'), 'w', encoding='utf-8') as f:
    f.write(sample_text)
  title = (f'Encoder (MLM) vs decoder (causal LM) for generation: from scratch '
           f'({config.scratch}), {config.corpus} ({config.heldout_share:.0%} held out), '
           f'{config.steps} steps of {config.batch_size} x {config.max_length}')
  result = {'config': config.to_dict(), 'rows': rows, 'samples': samples, 'command': command}
  result = study.write_results(out, title, table, result, {
      'benchmark': 'encoder_vs_decoder',
      'decoder_perplexity': rows['decoder']['value'],
      'encoder_pseudo_perplexity': rows['encoder']['value'],
      'decoder_tokens_per_s': rows['decoder']['tokens_per_s'],
      'encoder_tokens_per_s': rows['encoder']['tokens_per_s']})
  return {**result, 'samples_text': sample_text}
