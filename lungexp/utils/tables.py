"""CSV files a command is handed (predictions, labels), read with one clear error naming the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lungexp.utils.errors import LungexpError


class CsvFileError(LungexpError):
    """A CSV given to a command (``froc``, ``compare``) that cannot be read."""


def read_csv(path: Path, what: str, columns: Sequence[str] | None = None, rows: int | None = None) -> pd.DataFrame:
    """A CSV as a table (``seriesuid`` as text), or one :class:`CsvFileError` naming the file; only ``columns``
    (which must exist) and the first ``rows`` rows where given (``rows=0``: the header alone)."""
    if not path.is_file():
        raise CsvFileError(f"{path}: {what} not found; check the path")
    try:
        return pd.read_csv(path, dtype={"seriesuid": str}, usecols=columns, nrows=rows)
    except pd.errors.EmptyDataError:
        raise CsvFileError(f"{path}: the {what} file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise CsvFileError(f"{path}: not a readable CSV ({error})") from None
