"""The one exception family for problems in what a user hands in, the option checkers, and the entry-point guard.

Entry points print a :class:`LungexpError` as one message (no traceback) and exit non-zero; any
other exception is a program bug and keeps its traceback (see :func:`report_user_errors`). Each
error subclasses ``ValueError`` so callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import numbers
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar, overload

from lungexp.utils.log_files import record_in_log_files

log = logging.getLogger(__name__)

# Either variable set to a non-empty value other than 0 shows the full traceback of user errors too.
DEBUG_VARIABLES = ("LUNGEXP_DEBUG", "HYDRA_FULL_ERROR")
# Exit status of a run stopped with Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_STATUS = 130
# Exit status of a run stopped by SIGTERM (128 + SIGTERM), e.g. a batch system pre-empting the job.
TERMINATED_STATUS = 143

Main = TypeVar("Main", bound=Callable[..., Any])


class LungexpError(ValueError):
    """Bad input: a file, a CSV row, a config value, a checkpoint. The message names it and says what to do."""


class ConfigError(LungexpError):
    """A config key or value that cannot work; the message names the key as it is set on the command line."""


class ArgumentError(LungexpError):
    """An argument of a library call that cannot work; the message starts with the parameter (``depth=11 ...``),
    as the caller typed it. Where a config meets the code, :func:`named_under` prefixes the config key.

    Args:
        message: starts with the parameter's name.
        named: other parameters the message names (``"task"`` in ``labels_csv=null needs task=candidates``),
            prefixed too.
    """

    def __init__(self, message: str, *named: str) -> None:
        super().__init__(message)
        leading = re.match(r"[A-Za-z_][\w.]*", message)
        self.named = tuple(dict.fromkeys([leading.group(0), *named] if leading else named))

    def prefixed(self, prefix: str) -> str:
        """The message with every parameter it names as ``prefix.<parameter>``."""
        names = "|".join(re.escape(name) for name in sorted(self.named, key=len, reverse=True))
        return re.sub(rf"(?<![\w.])({names})(?=[=.;,:)\s]|$)", rf"{prefix}.\1", str(self))


class Terminated(Exception):
    """The run was stopped by SIGTERM (not bad input); the message says where it stopped and how to resume.

    Args:
        where: where it stopped (``by SIGTERM in epoch 3 (step 120)``).
        resume: what to run to go on from there.
        checkpoint: the ``last.ckpt`` it can be resumed from, if one was saved.
    """

    def __init__(self, where: str, resume: str, checkpoint: str | None = None) -> None:
        super().__init__(f"{where}; {resume}")
        self.where = where
        self.checkpoint = checkpoint


def look_up_option(key: str, value: Any, choices: Iterable[Any], error: type[LungexpError] = ConfigError) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ``error`` (a config key's :class:`ConfigError`;
    :class:`ArgumentError` where ``key`` is a parameter) naming ``key`` and the closest valid choice
    (``data.split.method='subset'``: did you mean 'subsets'?)."""
    choices = list(choices)
    if value in choices:
        return value
    raise error(f"{key}={value!r} is not a valid choice{did_you_mean(value, choices)}; "
                      f"choose one of: {', '.join(map(str, choices))}")


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@overload
def check_int(key: str, value: Any, minimum: int | None = None, allow_none: Literal[False] = False,
              error: type[LungexpError] = ...) -> int: ...


@overload
def check_int(key: str, value: Any, minimum: int | None = None, *, allow_none: bool,
              error: type[LungexpError] = ...) -> int | None: ...


def check_int(key: str, value: Any, minimum: int | None = None, allow_none: bool = False,
              error: type[LungexpError] = ConfigError) -> int | None:
    """Return ``value`` as an int if it is a whole number ``>= minimum`` (or None, with ``allow_none``);
    else raise ``error`` (see :func:`look_up_option`) naming ``key`` and what it must be."""
    if value is None and allow_none:
        return None
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        null = " or null" if allow_none else ""
        raise error(f"{key}={value!r} must be a whole number{bound}{null}")
    return int(value)


def check_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    error: type[LungexpError] = ConfigError,
) -> float:
    """Return ``value`` as a float if it is a number in the interval from ``low`` to ``high``
    (open at an end with ``low_open``/``high_open``; unbounded where None); else raise
    ``error`` (see :func:`look_up_option`) naming ``key`` and the interval."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    too_low = number and low is not None and (value <= low if low_open else value < low)
    too_high = number and high is not None and (value >= high if high_open else value > high)
    if not number or too_low or too_high:
        raise error(f"{key}={value!r} must be a number {_interval(low, high, low_open, high_open)}")
    return float(value)


@contextmanager
def named_under(prefix: str, error: type[LungexpError] = ArgumentError) -> Iterator[None]:
    """Raise an :class:`ArgumentError` of the code inside as ``error`` naming ``prefix.<parameter>``: where the
    arguments of that code are one node of a larger config (``patch`` of the datamodule, ``data`` of a run)."""
    try:
        yield
    except ArgumentError as problem:
        if issubclass(error, ArgumentError):
            raise error(problem.prefixed(prefix), *(f"{prefix}.{name}" for name in problem.named)) from None
        raise error(problem.prefixed(prefix)) from None


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "(finite)"


def debug_requested() -> bool:
    """Whether ``LUNGEXP_DEBUG`` or ``HYDRA_FULL_ERROR`` asks for full tracebacks of user errors."""
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_VARIABLES)


def user_error_in(error: BaseException) -> LungexpError | None:
    """The :class:`LungexpError` that caused ``error``, if any.

    Hydra's ``instantiate`` wraps whatever a constructor raises (e.g. a :class:`ConfigError` from a
    datamodule checking its options) in an ``InstantiationException``; the cause chain still has it.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, LungexpError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def report_user_errors(main: Main) -> Main:
    """Make ``main`` an entry point that ends bad input with one message instead of a traceback.

    * a :class:`LungexpError` (also one wrapped by Hydra's ``instantiate`` or re-raised by the
      Lightning ``Trainer``) prints ``error: <message>`` on stderr and exits with status 1;
    * Ctrl-C (``KeyboardInterrupt``) prints one line and exits with status 130;
    * :class:`Terminated` (a SIGTERM that training turned into a clean stop) prints ``stopped: <message>``
      and exits with status 143, so batch systems and ``&&`` chains see a failure;
    * any other exception is a program bug and keeps its traceback;
    * ``LUNGEXP_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``) re-raises user errors with their traceback.

    Apply it to every entry point's main function, one line each. Under ``@hydra.main`` it must sit
    *below* it, on the task function itself, because Hydra catches the task function's exceptions::

        @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
        @report_user_errors
        def main(cfg: DictConfig) -> None: ...

    For argparse entry points it decorates ``main(argv)`` directly. In a Hydra ``-m`` sweep a user
    error fails only its job: the message is logged, the other jobs still run, and the sweep ends
    non-zero with Hydra's "Error executing job with overrides: [...]" and the message (raised as a
    ``CompactHydraException``, which Hydra prints without a traceback). Ctrl-C ends the whole sweep.
    """

    @functools.wraps(main)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C)", file=sys.stderr)
            raise SystemExit(INTERRUPTED_STATUS) from None
        except Terminated as stop:
            print(f"stopped: {stop}", file=sys.stderr)
            raise SystemExit(TERMINATED_STATUS) from None
        except Exception as error:
            user_error = user_error_in(error)
            if user_error is None or debug_requested():
                raise
            _exit_with_message(f"error: {user_error}")

    return guarded  # type: ignore[return-value]


def _exit_with_message(message: str) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        from hydra.errors import CompactHydraException

        log.error(message)  # Hydra reports a failed job only when the whole sweep has ended
        raise CompactHydraException(message) from None  # fails this job; Hydra prints it without a traceback
    record_in_log_files(message, logging.ERROR)  # the run folder's log says why it ended
    print(message, file=sys.stderr)
    raise SystemExit(1)

