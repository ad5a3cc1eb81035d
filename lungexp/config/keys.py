"""A library layer's error, which names its parameter, named by its config key where Hydra built the layer.

Hydra's ``instantiate`` says which node it was building (``full_key``), so an
:class:`~lungexp.utils.errors.ArgumentError` raised inside (``depth=11``) is reported as the
:class:`~lungexp.utils.errors.ConfigError` of that node's key (``model.net.depth=11``). Imports nothing slow:
entry points decorate their main function with :func:`report_user_errors` at import time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from lungexp.utils import errors
from lungexp.utils.errors import ArgumentError, ConfigError

Main = TypeVar("Main", bound=Callable[..., Any])

# Hydra's InstantiationException ends with the node it was instantiating.
_FULL_KEY = re.compile(r"\nfull_key: (\S+)\s*$")


def config_error_in(error: BaseException) -> ConfigError | None:
    """The :class:`ArgumentError` that caused ``error`` as a :class:`ConfigError` naming its config key, where
    the cause chain says which node Hydra was instantiating (``model.net``: ``depth=11`` is
    ``model.net.depth=11``); else None."""
    node: str | None = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ArgumentError):
            return ConfigError(current.prefixed(node)) if node else None
        match = _FULL_KEY.search(str(current))
        node = match.group(1) if match else node
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def report_user_errors(main: Main) -> Main:
    """:func:`lungexp.utils.errors.report_user_errors`, with a library layer's error named by its config key."""

    @functools.wraps(main)
    def keyed(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Exception as error:
            named = config_error_in(error)
            if named is None:
                raise
            raise named from error

    return errors.report_user_errors(cast(Main, keyed))
