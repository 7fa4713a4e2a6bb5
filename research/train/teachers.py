"""Saved runs as distillation teachers: their outputs on a student's train features.

    targets = soft_targets(config, spec, objective, tokenizer, train_features, workdir)
    models, params = in_step_teachers(config, spec, objective, tokenizer)  # in the step

Each teacher is rebuilt from its workdir (`config.json` + checkpoint, see `saved_runs`)
and run once, without dropout, on the student's own features, so teachers must share the
student's task and tokenizer. Without augmentation, running a frozen teacher inside
every step gives the same numbers at several times the cost, since nothing about an
example changes between epochs; `in_step_teachers` loads them for the step instead
(`config.distill.mode='in_step'`), which distillation of intermediates needs. Each
teacher's raw outputs are cached under `config.distill.cache_dir` (default:
the student's workdir) by a key of the teacher's folder, checkpoint step and the
features' token ids, so a resumed run, or a second student with another temperature or
alpha, does not run the teachers again.

A teacher is a run folder, or `hf:<folder or Hub id>`, a fine-tuned Hugging Face
classifier (`hf_heads.load_task_model`): its head must be the task's kind and its
labels the task's (reordered by name), its tokenizer the student's.

On a corpus (general distillation, `encoder_teachers`) only a teacher's encoder is
read: a run folder of any task, or `hf:<name>`, any pre-trained checkpoint ('hf:minilm-l6',
a folder, a Hub id); its tokenizer must still be the student's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile

import flax
import jax
import jax.numpy as jnp
import numpy as np

from research import specs
from research.checkpoints import hf_heads, load_pretrained, load_tokenizer
from research.data import tasks
from research.models.heads import TaskModel
from research.train import saved_runs
from research.transforms import distill


def features_digest(features: list) -> str:
  """A hash of the features' token ids (and token types): equal only for equal inputs."""
  digest = hashlib.sha1()
  for feature in features:
    for key in ('input_ids', 'token_type_ids'):
      if key in feature:
        digest.update(np.asarray(feature[key], np.int32).tobytes())
    digest.update(b'|')
  return digest.hexdigest()


def teacher_outputs(folder: str, which: str, features: list, config, spec: tasks.TaskSpec,
                    tokenizer, cache_dir: str, digest: str | None = None) -> np.ndarray:
  """One teacher's class probabilities [n, classes] or scores [n] on `features`."""
  digest = digest or features_digest(features)

  def cache_entry(step):
    key = json.dumps({'teacher': folder, 'checkpoint': which, 'step': step, 'features': digest})
    name = 'teacher_' + hashlib.sha1(key.encode()).hexdigest()[:16] + '.npz'
    return key, os.path.join(cache_dir, name)

  key, path = cache_entry(0 if folder.startswith(HF_PREFIX) else
                          saved_runs.checkpoint_step(folder, which))
  if os.path.exists(path):
    try:
      with np.load(path) as saved:
        if str(saved['key']) == key:
          return saved['outputs']
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
      logging.warning('Ignoring unreadable teacher cache %s (%s); running the teacher', path, e)
  run = load_teacher(folder, which, spec, tokenizer)
  key, path = cache_entry(run.step)  # the teacher may have saved a newer step meanwhile
  t0 = time.perf_counter()
  outputs = saved_runs.run_outputs(run, features, config.eval_batch_size, config.max_length,
                                   config.pad_multiple)
  logging.info('Teacher %s (%s checkpoint, step %d): %d outputs in %.0f s', folder, which,
               run.step, len(features), time.perf_counter() - t0)
  if jax.process_index() == 0:  # written whole, then renamed: a kill leaves no half file
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
      np.savez(f, outputs=outputs, key=key)
    os.replace(path + '.tmp', path)
  return outputs


HF_PREFIX = 'hf:'


def teacher_folders(config) -> list[str]:
  """The teachers named by `config.distill.teachers` (comma-separated): absolute run
  folders, and 'hf:<folder or Hub id>' (an existing folder made absolute)."""
  refs = []
  for entry in specs.items(config.distill.teachers, what='config.distill.teachers'):
    if entry.startswith(HF_PREFIX):
      name = entry[len(HF_PREFIX):].strip()
      if not name:
        raise ValueError(f"config.distill.teachers: {entry!r} names no model after 'hf:'")
      refs.append(HF_PREFIX + (os.path.abspath(name) if os.path.isdir(name) else name))
    else:
      refs.append(os.path.abspath(entry))
  return refs


def load_hf_teacher(name: str, spec: tasks.TaskSpec, tokenizer) -> saved_runs.SavedRun:
  """A fine-tuned Hugging Face classifier as a teacher (its labels in the task's order)."""
  ref = HF_PREFIX + name
  model, params, labels = hf_heads.load_task_model(name)
  if model.objective.kind != spec.kind:
    raise ValueError(f'Teacher {ref} is a {model.objective.kind} model; the student\'s task '
                     f'{spec.name} is {spec.kind}')
  if spec.label_names:
    try:
      params = hf_heads.reorder_labels(params, labels, spec.label_names)
    except ValueError as e:
      raise ValueError(f'Teacher {ref} does not predict the labels of {spec.name}: {e}') from e
  if load_tokenizer(name).get_vocab() != tokenizer.get_vocab():
    raise ValueError(f'Teacher {ref} uses another tokenizer than the student; they must '
                     'share one')
  return saved_runs.SavedRun(ref, None, spec, model, params, 0)


def load_teacher(folder: str, which: str, spec: tasks.TaskSpec, tokenizer) -> saved_runs.SavedRun:
  """A saved run (or 'hf:<name>') as a teacher, checked to share the student's task and
  tokenizer."""
  if folder.startswith(HF_PREFIX):
    return load_hf_teacher(folder[len(HF_PREFIX):], spec, tokenizer)
  run = saved_runs.load_run(folder, which)
  if run.spec.name != spec.name:
    raise ValueError(f'Teacher {folder} was trained on {run.spec.name}, the student on '
                     f'{spec.name}')
  if saved_runs.run_tokenizer(folder, run.config).get_vocab() != tokenizer.get_vocab():
    raise ValueError(f'Teacher {folder} ({run.config.model}) uses another tokenizer than '
                     'the student; they must share one')
  return run


def check_objective(objective, spec: tasks.TaskSpec) -> None:
  if not objective.supports_ensemble:
    raise ValueError(f'config.distill supports tasks whose outputs can be averaged '
                     f'(classification, regression); {spec.name} is {spec.kind}')


def soft_targets(config, spec: tasks.TaskSpec, objective, tokenizer, features: list,
                 workdir: str) -> np.ndarray:
  """The ensemble target of `config.distill.teachers` for each of `features`.

  Returns [n, classes] mean softened probabilities (classification) or [n] mean scores
  (regression); see `research.transforms.distill.teacher_targets`.
  """
  cfg = config.distill
  check_objective(objective, spec)
  cache_dir = cfg.get('cache_dir') or workdir
  digest = features_digest(features)
  outputs = [teacher_outputs(folder, cfg.checkpoint, features, config, spec, tokenizer,
                             cache_dir, digest) for folder in teacher_folders(config)]
  return distill.teacher_targets(outputs, objective, cfg.temperature)


def in_step_teachers(config, spec: tasks.TaskSpec, objective, tokenizer
                     ) -> tuple[tuple, tuple]:
  """(models, params) of `config.distill.teachers`, to run frozen inside the step."""
  check_objective(objective, spec)
  runs = [load_teacher(folder, config.distill.checkpoint, spec, tokenizer)
          for folder in teacher_folders(config)]
  return tuple(r.model for r in runs), tuple(r.params for r in runs)


def check_same_vocabulary(teacher: str, teacher_tokenizer, teacher_vocab: int,
                          student: str, student_tokenizer, student_vocab: int) -> None:
  """Raises ValueError naming both models unless their tokenizers and embedding tables
  agree (distillation compares them token by token)."""
  if teacher_vocab != student_vocab:
    raise ValueError(f'Teacher {teacher} has a vocabulary of {teacher_vocab} tokens, the '
                     f'student ({student}) {student_vocab}; they must share one tokenizer')
  if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
    raise ValueError(f'Teacher {teacher} uses another tokenizer than the student '
                     f'({student}), though both have {student_vocab} tokens; they must '
                     'share one')


def load_encoder_teacher(ref: str, which: str, dtype: str = 'float32'):
  """(name, EncoderConfig, encoder params, tokenizer) of a run folder or 'hf:<name>'."""
  if ref.startswith(HF_PREFIX):
    name = ref[len(HF_PREFIX):]
    encoder, params = load_pretrained(name, dtype=dtype)
    return ref, encoder, params, load_tokenizer(name)
  if not os.path.isdir(ref):
    raise FileNotFoundError(f'config.distill.teachers: {ref} is not a run folder; name a '
                            "pre-trained checkpoint as 'hf:<alias, folder or Hub id>' "
                            "(e.g. 'hf:minilm-l6')")
  run = saved_runs.load_run(ref, which)
  return ref, run.model.encoder, run.params['encoder'], saved_runs.run_tokenizer(ref, run.config)


def encoder_teachers(config, objective, tokenizer, student_encoder) -> tuple[tuple, tuple]:
  """(models, params) of `config.distill.teachers` read as encoders, for the step.

  Each model is a TaskModel of the teacher's encoder with the student's objective, so
  the step runs it like the student; the head's params are zeros: its outputs are never
  read (only intermediates are distilled) and the jitted step drops their computation.
  """
  student = config.init_from or f'config.model={config.model}'
  models, params = [], []
  for ref in teacher_folders(config):
    name, encoder, encoder_params, teacher_tokenizer = load_encoder_teacher(
        ref, config.distill.checkpoint, config.dtype)
    check_same_vocabulary(name, teacher_tokenizer, encoder.vocab_size, student, tokenizer,
                          student_encoder.vocab_size)
    model = TaskModel(encoder, objective)
    ids = np.zeros((1, 8), np.int32)
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), ids,
                                                   np.ones_like(ids)))['params']
    tree = {k: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                            flax.linen.meta.unbox(v))
            for k, v in shapes.items() if k != 'encoder'}
    models.append(model)
    params.append({**tree, 'encoder': encoder_params})
  return tuple(models), tuple(params)
