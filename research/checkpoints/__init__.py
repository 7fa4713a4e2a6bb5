"""Hugging Face checkpoints <-> our params trees; orbax save/restore for training."""
from research.checkpoints.hf_export import export_pretrained
from research.checkpoints.hf_load import CheckpointError, load_pretrained, load_tokenizer
from research.checkpoints.hub import resolve
