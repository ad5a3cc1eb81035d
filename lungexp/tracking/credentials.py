"""No password in a config, an override or MLflow's URI variables: refused before Hydra writes anything.

A run keeps its config in many places (``.hydra/config.yaml`` and ``overrides.yaml``, the MLflow params and
the ``overrides`` tag, both checkpoints, the printed summary), each readable by everyone who can read the
run. So a ``scheme://user:password@host`` in any value, whatever the key or the scheme's spelling
(``HTTP://``, ``postgresql://``), is refused with one message naming where it is, before the first of them:
:class:`RefusePasswords` is the first of ``hydra.callbacks`` in every entry point's config, and Hydra calls
it before it creates the output folder. Logins belong where MLflow (or the database driver) reads them.

Imports nothing slow: Hydra builds the callback on every start of every entry point.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lungexp.utils.errors import ConfigError

CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CREDENTIALS_FILE = "~/.mlflow/credentials"
# The URIs MLflow reads from the environment when a config gives none.
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# Where a URI starts inside any text (a list override, a sentence): its scheme, in any case (RFC 3986).
_URI_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_OVERRIDES = "hydra.overrides."
_RESOLVER = re.compile(r"\$\{[\w.]+:")  # `${oc.env:`, `${now:`: a value made here, not copied from another key


def _netloc(uri: str) -> str:
    try:
        return urlsplit(uri).netloc
    except ValueError:  # e.g. an unbalanced ']' after the host ("[http://u:p@host]"): the login is still there
        return re.split(r"[/?#]", uri.split("://", 1)[1], maxsplit=1)[0]


def has_password(uri: str) -> bool:
    """Whether ``uri`` carries a password (``user:password@``, ``:password@``, a percent-encoded ``:``)."""
    userinfo, at, _ = _netloc(uri).rpartition("@")
    return bool(at) and ":" in unquote(userinfo)


def masked(uri: str) -> str:
    """``uri``'s scheme and host, its login left out (``HTTP://…@host:5000``): safe to print."""
    host = re.split(r"[\s,]", _netloc(uri).rpartition("@")[2], maxsplit=1)[0]  # not a list override's next item
    return f"{uri.split('://', 1)[0]}://…@{host}"


def passwords_in(text: str) -> list[str]:
    """Every URI in ``text`` that carries a password, each from its scheme to the end of ``text``."""
    return [text[start.start():] for start in _URI_START.finditer(text) if has_password(text[start.start():])]


def password_error(where: str, uri: str) -> ConfigError:
    """The refusal of a password in ``where`` (a config key, an override, a variable), without the password."""
    return ConfigError(
        f"{where} holds a password ({masked(uri)}), but a run's config is stored and logged (.hydra/, MLflow "
        "params and tags, checkpoints) for all who read the run to see; remove the login from the URI and give "
        f"MLflow's in {' and '.join(CREDENTIAL_VARIABLES)} or {CREDENTIALS_FILE} (a database's in its own "
        "password file, e.g. PostgreSQL's ~/.pgpass)")


def check_no_password_in(where: str, text: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` if ``text`` holds a URI with a password."""
    for uri in passwords_in(text):
        raise password_error(where, uri)


def check_uri_variables() -> None:
    """Refuse a password in MLflow's URI variables: MLflow uses them wherever no URI is given (a command-line
    tool that takes a tracking URI calls this and :func:`check_no_password_in` on its argument)."""
    for variable in URI_VARIABLES:
        check_no_password_in(f"the environment variable {variable}", os.environ.get(variable, ""))


def check_no_passwords(config: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first password in MLflow's URI variables, the command line's
    overrides, or any value of ``config`` (as written, then as its interpolations resolve)."""
    check_uri_variables()
    # What was typed first, named as typed; then the run's own keys before Hydra's (which derive from them).
    written = sorted(_strings(OmegaConf.to_container(config, resolve=False)),
                     key=lambda item: (not item[0].startswith(_OVERRIDES), item[0].startswith("hydra.")))
    for key, text in written:
        check_no_password_in(_where(key, text), text)
    # A resolved password comes from a resolver (``${oc.env:...}``): name the key that calls it, not the keys
    # that copy its value.
    interpolated = sorted((item for item in written if "${" in item[1]),
                          key=lambda item: (item[0].startswith("hydra."), not _RESOLVER.search(item[1])))
    for key, text in interpolated:
        for resolved_key, resolved in _strings(_resolved(config, key), key):
            check_no_password_in(f"{resolved_key} (as resolved from {text})", resolved)


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, text)`` of every string in a plain container."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _strings(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{key}[{index}]")
    elif isinstance(node, str):
        yield key, node


def _resolved(config: DictConfig, key: str) -> Any:
    """The value of ``key`` with its interpolations resolved, as plain containers; None where it does not
    resolve here (e.g. ``${hydra:...}`` before the job starts: what it names is checked by its own key)."""
    try:
        value = OmegaConf.select(config, key, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception:  # noqa: BLE001  any resolver may raise anything; the value was checked as written
        return None


def _where(key: str, text: str) -> str:
    if key.startswith(_OVERRIDES):  # `hydra.overrides.task[0]`: name the key the user typed
        return f"{text.split('=', 1)[0].lstrip('+~')} (on the command line)"
    return key


class RefusePasswords(Callback):
    """Hydra callback: :func:`check_no_passwords` before a run or a sweep starts, ending the process with one
    ``error:`` line (Hydra turns a callback's exceptions into warnings and goes on, so it exits itself)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_password(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_password(config)


def _exit_on_password(config: DictConfig) -> None:
    try:
        check_no_passwords(config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
