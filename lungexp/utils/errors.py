"""The one exception family for problems in what a user hands in, and the option checker.

Entry points print a :class:`LungexpError` as one message (no traceback) and exit non-zero; any
other exception is a program bug and keeps its traceback. Each error subclasses ``ValueError`` so
callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class LungexpError(ValueError):
    """Bad input: a file, a CSV row, a config value, a checkpoint. The message names it and says what to do."""


class ConfigError(LungexpError):
    """A config key or value that cannot work; the message names the key as it is set on the command line."""


def look_up_option(key: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise :class:`ConfigError` naming ``key``
    and the closest valid choice (``data.split.method='subset'``: did you mean 'subsets'?)."""
    choices = list(choices)
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"{key}={value!r} is not a valid choice{hint}; choose one of: {', '.join(map(str, choices))}")
