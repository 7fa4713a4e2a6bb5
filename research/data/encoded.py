"""Types shared by the tokenizing modules (`tokenize`, `squad_features`).

Example:
  >>> encoded = Encoded(features=[{'input_ids': ids}], num_truncated=0)
  >>> features, num_truncated = encoded
"""

from typing import Any, NamedTuple

# Label of tokens that carry no target (special tokens, later sub-tokens).
IGNORE_INDEX = -100


class Encoded(NamedTuple):
  """Features of a list of examples and how many examples lost tokens.

  Attributes:
    features: one dict of numpy arrays / scalars per feature, unpadded.
    num_truncated: number of examples that were truncated.
  """
  features: list[dict]
  num_truncated: int


def check_fast(tokenizer: Any) -> None:
  """Raises ValueError unless `tokenizer` is a Hugging Face fast tokenizer.

  Args:
    tokenizer: the tokenizer object to check.

  Raises:
    ValueError: if it has no fast (Rust) backend, which word_ids and offset
      mappings need.
  """
  if not getattr(tokenizer, 'is_fast', False):
    raise ValueError('a Hugging Face fast tokenizer is needed (word_ids and '
                     f'offset mappings), got {type(tokenizer).__name__}')
