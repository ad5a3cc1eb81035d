"""The package layout says one thing per name, and the layout table of the architecture page names what is there."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from tests.helpers.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "lungexp"
LAYOUT_PAGE = PROJECT_ROOT / "docs" / "architecture.md"


def test_no_two_modules_share_a_file_name() -> None:
    folders: dict[str, list[str]] = defaultdict(list)
    for module in PACKAGE.rglob("*.py"):
        if module.name != "__init__.py":
            folders[module.name].append(str(module.parent.relative_to(PROJECT_ROOT)))
    shared = {name: places for name, places in folders.items() if len(places) > 1}
    assert not shared, f"module file names used in more than one folder: {shared}"


def _defines(folder: Path, name: str) -> bool:
    pattern = re.compile(rf"^(def|class) {re.escape(name)}\b", re.MULTILINE)
    return any(pattern.search(module.read_text()) for module in folder.rglob("*.py"))


def _exists(folder: Path, name: str) -> bool:
    """A module or sub-package of ``folder``, an entry point, a config group or top-level key, or a function or
    class of ``folder``."""
    stem = name.removesuffix(".py")
    top_level = re.search(rf"^{stem}:", (PROJECT_ROOT / "conf" / "config.yaml").read_text(), re.MULTILINE)
    return ((folder / f"{stem}.py").is_file() or (folder / stem).is_dir() or (PACKAGE / f"{stem}.py").is_file()
            or (PROJECT_ROOT / "conf" / stem).is_dir() or top_level is not None or _defines(folder, stem))


def test_the_layout_table_names_only_what_exists() -> None:
    rows = re.findall(r"^\| `(lungexp/[a-z_/]+)/` \|(.*)$", LAYOUT_PAGE.read_text(), re.MULTILINE)
    folders = {folder for folder, _ in rows}
    packages = {str(init.parent.relative_to(PROJECT_ROOT)) for init in PACKAGE.rglob("__init__.py")} - {"lungexp"}
    assert packages <= folders, f"packages the layout table of {LAYOUT_PAGE.name} leaves out: {sorted(packages - folders)}"
    stale = [(folder, name) for folder, text in rows for name in re.findall(r"`([a-z][a-z0-9_]*(?:\.py)?)`", text)
             if not _exists(PROJECT_ROOT / folder, name)]
    assert not stale, f"names in the layout table of {LAYOUT_PAGE.name} that the tree does not have: {stale}"
