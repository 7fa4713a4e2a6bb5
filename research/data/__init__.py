"""Input pipelines: task registry, readers, TFDS source, tokenization, batching.

  tasks          TaskSpec registry (GLUE, CoNLL-2003, SQuAD v1.1), get_task
  glue_tsv       GLUE TSV reader          conll    CoNLL column-file reader
  squad_json     SQuAD v1.1 JSON reader   errors   DataFormatError, MissingDataError
  local_source   find and read a split from a local folder
  tfds_source    the same examples from TensorFlow Datasets (lazy import)
  sources        load_examples(task, split, data_dir=None, source='auto')
  tokenize       sentence / pair / NER features (re-exports the SQuAD functions)
  squad_features SQuAD windows and squad_postprocess
  batching       BatchIterator: padded, deterministic, resumable, host-sharded
"""
