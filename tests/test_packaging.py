"""pyproject.toml: every imported third-party package is declared, and the console scripts work.

Read from pyproject.toml itself rather than importlib.metadata, which only reflects the last install.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.config import PROJECT_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SCRIPTS: dict[str, str] = PROJECT["scripts"]


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules(package: Path) -> set[str]:
    modules: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_imported_third_party_package_is_a_declared_dependency() -> None:
    declared = {_normalised(re.match(r"[A-Za-z0-9._-]+", spec).group()) for spec in PROJECT["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    third_party = {module for module in _imported_top_level_modules(PROJECT_ROOT / "lungexp")
                   if module not in sys.stdlib_module_names and module != "lungexp"}
    undeclared = {module: distributions.get(module) for module in third_party
                  if not {_normalised(d) for d in distributions.get(module, [module])} & declared}
    assert not undeclared, f"imported but not in pyproject.toml dependencies: {undeclared}"


def test_console_scripts_are_declared_and_resolve_to_callables() -> None:
    assert {"lungexp-run", "lungexp-preprocess", "lungexp-convert", "lungexp-froc", "lungexp-evaluate",
            "lungexp-predict"} <= SCRIPTS.keys()
    for name, target in SCRIPTS.items():
        entry_point = importlib.metadata.EntryPoint(name=name, value=target, group="console_scripts")
        assert callable(entry_point.load()), f"{name} = {target!r} is not callable"


@pytest.mark.parametrize("name", ["lungexp-run", "lungexp-preprocess"])
def test_hydra_console_scripts_find_the_configs_from_any_folder(name: str, tmp_path: Path) -> None:
    """A console script imports its module (no ``-m``): Hydra must still find conf/ from elsewhere."""
    module, function = SCRIPTS[name].split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    proc = subprocess.run([sys.executable, "-c", code, "--cfg", "job", "model=resnet3d"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lungexp.models.ResNet3D" in proc.stdout


@pytest.mark.parametrize(("name", "expected"), [("lungexp-evaluate", "split: test"),
                                              ("lungexp-predict", "batch_size: 64")])
def test_evaluate_and_predict_console_scripts_find_their_configs_from_any_folder(name: str, expected: str,
                                                                                 tmp_path: Path) -> None:
    module, function = SCRIPTS[name].split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    proc = subprocess.run([sys.executable, "-c", code, "--cfg", "job"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected in proc.stdout


def test_convert_console_script_parses_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.metadata.EntryPoint(name="lungexp-convert", value=SCRIPTS["lungexp-convert"],
                                         group="console_scripts").load()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "DICOM" in capsys.readouterr().out
