"""The ``data``, ``eval``, ``target`` and ``cv`` groups travel down as typed options: below the entry points, no
module reads them from a raw config again (``cfg.data``, ``cfg["eval"]``, ``cfg.get("cv")``, ``OmegaConf.select(cfg,
"data.…")``, ``instantiate(cfg.data)``). ``lungexp.config`` builds the options and ``lungexp.tracking`` logs the
whole config, so they may."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lungexp

PACKAGE = Path(lungexp.__file__).parent
GROUPS = ("data", "eval", "target", "cv")
# The entry points (the top layer of the import-linter contract) and the packages that read the raw config.
ALLOWED = {"run.py", "evaluate.py", "predict.py", "preprocess.py", "convert.py", "froc.py", "compare.py",
           "register.py", "config", "tracking"}
# What names a raw config: cfg, config, fold_cfg, run.config, self.cfg, ...
CONFIG_NAME = re.compile(r"(^|_)(cfg|conf|config)$")
KEY = re.compile(rf"^({'|'.join(GROUPS)})(\.|$)")


def _is_config(node: ast.expr) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return name is not None and CONFIG_NAME.search(name) is not None


def _group_key(node: ast.expr | None) -> bool:
    """A string (or an f-string's leading text) naming a group or a key inside one: ``"data"``, ``f"data.{key}"``."""
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY.match(node.value) is not None


def raw_group_reads(source: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every read of ``data``, ``eval`` or ``cv`` from a config in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in GROUPS and _is_config(node.value):
            found.append(node)  # cfg.data, run.config.eval
        elif isinstance(node, ast.Subscript) and _is_config(node.value) and _group_key(node.slice):
            found.append(node)  # cfg["data"]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            method, first = node.func.attr, node.args[0]
            if method in ("get", "pop") and _is_config(node.func.value) and _group_key(first):
                found.append(node)  # cfg.get("cv")
            elif method == "select" and len(node.args) > 1 and _group_key(node.args[1]):
                found.append(node)  # OmegaConf.select(cfg, "data.split")
    return sorted({(node.lineno, ast.get_source_segment(source, node) or "") for node in found})


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py")
                  if path.relative_to(PACKAGE).parts[0] not in ALLOWED)


def test_no_module_below_the_entry_points_reads_a_group_from_the_raw_config() -> None:
    reads = [f"lungexp/{path.relative_to(PACKAGE)}:{line}: {code}"
             for path in _modules() for line, code in raw_group_reads(path.read_text(encoding="utf-8"))]
    assert not reads, ("these modules read the data, eval, target or cv group from a raw config; take the typed "
                       "options instead (RunOptions.data / .evaluation / .target / .cv, DataOptions, "
                       "EvaluationOptions, TargetOptions):\n"
                       + "\n".join(reads))


@pytest.mark.parametrize("code", [
    "cfg.data.patch", "fold_cfg.cv.folds", "run.config.eval", "cfg.target.kind", 'cfg["data"]', 'cfg.get("eval")',
    'cfg.get("cv", None)',
    'OmegaConf.select(view, "data.root")', 'OmegaConf.select(cfg, f"data.{key}")',
    "hydra.utils.instantiate(cfg.data, _convert_='partial')",
])
def test_the_check_finds_each_kind_of_read(code: str) -> None:
    assert raw_group_reads(code), code


@pytest.mark.parametrize("code", [
    "run.data.patch", "run.evaluation", "run.cv.folds", "datamodule.options.split", "member.recipe.data",
    'cfg.model.net', 'cfg.get("logger")', 'OmegaConf.select(cfg, "paths.data_dir")', 'cfg["database"]',
])
def test_typed_options_and_other_groups_pass(code: str) -> None:
    assert not raw_group_reads(code), code
