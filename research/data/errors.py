"""Exceptions raised by the data readers and sources.

Every reader error names the file and, where there is one, the 1-based line, so a
user can open the file at the right place: `DataFormatError('dev.tsv:17: ...')`.
"""

import os
from typing import Optional, Union

PathLike = Union[str, os.PathLike]


class DataFormatError(ValueError):
  """A data file exists but a row or record in it is malformed."""

  def __init__(self, path: PathLike, message: str, line: Optional[int] = None):
    where = f'{path}:{line}' if line is not None else f'{path}'
    super().__init__(f'{where}: {message}')
    self.path = str(path)
    self.line = line


class MissingDataError(FileNotFoundError):
  """No data could be found for a task / split (missing file or no source)."""
