"""MkDocs hook: the API reference, one page per package of ``lungexp/``, made from the source tree at build time.

Each page documents every module of its package with mkdocstrings (``::: module``), so a new module or package
is in the reference without anyone listing it; the pages are added under the nav entry ``API reference``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lungexp"
NAV_TITLE = "API reference"
INDEX = "reference/index.md"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def packages() -> list[str]:
    """Every package of lungexp, dotted, the root first."""
    return sorted((_module_name(init) for init in PACKAGE.rglob("__init__.py")), key=lambda name: (name != "lungexp", name))


def _modules(package: str) -> list[str]:
    folder = ROOT.joinpath(*package.split("."))
    return [_module_name(path) for path in sorted(folder.glob("*.py")) if path.name != "__init__.py"]


def _first_line(package: str) -> str:
    init = ROOT.joinpath(*package.split("."), "__init__.py")
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def _page_path(package: str) -> str:
    return f"reference/{package}.md"


def package_page(package: str) -> str:
    title = "Entry points and the package root" if package == "lungexp" else package
    lines = [f"# {title}", "", f"::: {package}", "    options:", "      members: false", "      show_root_heading: false", ""]
    for module in _modules(package):
        lines += [f"::: {module}", ""]
    return "\n".join(lines)


def index_page() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings of every module of `lungexp/`, one page per package (the layers and what",
             "each package holds: [Architecture](../architecture.md)).", "",
             "| package | what it is |", "|---|---|"]
    lines += [f"| [`{package}`]({package}.md) | {_first_line(package)} |" for package in packages()]
    return "\n".join(lines) + "\n"


def on_config(config: Any, **kwargs: Any) -> Any:
    """The reference's pages under its nav entry."""
    pages = [{"Overview": INDEX}, *({package: _page_path(package)} for package in packages())]
    for index, item in enumerate(config["nav"]):
        if isinstance(item, dict) and item.get(NAV_TITLE) == INDEX:
            config["nav"][index] = {NAV_TITLE: pages}
    return config


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    files.append(File.generated(config, INDEX, content=index_page()))
    for package in packages():
        files.append(File.generated(config, _page_path(package), content=package_page(package)))
    return files
