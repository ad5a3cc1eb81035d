"""The one exception family for problems in what a user hands in, and the option checkers.

Entry points print a :class:`LungexpError` as one message (no traceback) and exit non-zero; any
other exception is a program bug and keeps its traceback. Each error subclasses ``ValueError`` so
callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations

import difflib
import math
import numbers
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


def check_int(key: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """Return ``value`` as an int if it is a whole number ``>= minimum`` (or None, with ``allow_none``);
    else raise :class:`ConfigError` naming ``key`` and what it must be."""
    if value is None and allow_none:
        return None
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        null = " or null" if allow_none else ""
        raise ConfigError(f"{key}={value!r} must be a whole number{bound}{null}")
    return int(value)


def check_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a number in the interval from ``low`` to ``high``
    (open at an end with ``low_open``/``high_open``; unbounded where None); else raise
    :class:`ConfigError` naming ``key`` and the interval."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    too_low = number and low is not None and (value <= low if low_open else value < low)
    too_high = number and high is not None and (value >= high if high_open else value > high)
    if not number or too_low or too_high:
        raise ConfigError(f"{key}={value!r} must be a number {_interval(low, high, low_open, high_open)}")
    return float(value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "(finite)"
