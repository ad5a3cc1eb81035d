"""Running the entry points as a user would: ``python -m lungexp.<name> ...`` in a subprocess, with a timeout
(or as a child forked from a warm :class:`~tests.helpers.fork_server.ForkServer`, for the tests not about the
process itself)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from lungexp.utils.errors import DEBUG_VARIABLES
from tests.helpers.config import PROJECT_ROOT
from tests.helpers.fork_server import ForkServer


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (the scripts are no package), registered under ``name`` (dataclasses look
    their module up in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def entry_point_command(name: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", f"lungexp.{name}", *args]


def entry_point_env(root: Path) -> dict[str, str]:
    """The environment of a user's shell, with outputs (logs, default MLflow store) under ``root``."""
    env = {key: value for key, value in os.environ.items() if key not in DEBUG_VARIABLES}  # they would turn messages into tracebacks
    return {**env, "LUNGEXP_ROOT": str(root), "PYTHONUNBUFFERED": "1"}


def run_entry_point(name: str, args: Sequence[str], root: Path, timeout: float = 240,
                    env: dict[str, str] | None = None,
                    fork_server: ForkServer | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m lungexp.<name> *args`` from the project root; outputs go under ``root``. With
    ``fork_server`` (the ``fork_server`` fixture) it runs as that server's forked child, without the seconds
    a fresh interpreter spends importing."""
    full_env = {**entry_point_env(root), **(env or {})}
    if fork_server is not None:
        return fork_server.run(f"lungexp.{name}", list(args), env=full_env, cwd=PROJECT_ROOT, timeout=timeout)
    return subprocess.run(entry_point_command(name, args), cwd=PROJECT_ROOT, env=full_env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)


def printed(pattern: str, output: str) -> str:
    """The first group of ``pattern`` in a command's ``output`` (e.g. the MLflow run id a summary prints); fails
    showing the output's end when it is not there."""
    found = re.search(pattern, output)
    assert found, f"{pattern!r} not in the output:\n{output[-3000:]}"
    return found.group(1)
