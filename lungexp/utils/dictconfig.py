"""OmegaConf resolvers, config printing, changed copies and instantiation of config-defined object lists."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from lungexp.utils.errors import ConfigError

PRINT_ORDER = ("data", "aug", "model", "callbacks", "logger", "trainer", "paths", "experiment")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
"""The Hydra config folder, absolute for ``@hydra.main(config_path=CONFIG_DIR)``: Hydra reads a relative
path as a package when the entry point is imported (a console script) rather than run with ``-m``."""


def register_resolvers() -> None:
    """``${len:LIST}`` (channels = number of patch scales) and ``${cwd:}``. Idempotent.

    ``${cwd:}`` is the launch folder (runs never chdir). Unlike ``${hydra:runtime.cwd}`` it resolves
    before Hydra's runtime config exists, which the ``-m`` launcher needs for the sweep folder.
    """
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda value: len(value))
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)


def check_required(cfg: DictConfig) -> None:
    """Fail early, naming every mandatory value (``???`` in the configs) left unset."""
    missing = sorted(_missing_keys(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        examples = " ".join(f"{key}=..." if key != "data.root" else "data.root=/path/to/scans" for key in missing)
        raise ConfigError(f"missing mandatory config value(s): {', '.join(missing)}; set them on the command "
                         f"line, e.g. {examples}")


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    # Not OmegaConf.missing_keys: on omegaconf 2.3.1 it resolves interpolations while walking, so
    # `labels_csv: ${data.root}/...` with `root: ???` raises InterpolationToMissingValueError instead.
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in _missing_keys(value, f"{prefix}{name}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def print_config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER) -> None:
    """The composed config as a tree, one branch per group, in a stable order."""
    tree = Tree("config", guide_style="dim")
    keys = [k for k in order if k in cfg] + [str(k) for k in cfg if k not in order]  # config keys are strings
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(f"[bold]{key}[/bold]").add(Syntax(text, "yaml", background_color="default"))
    Console(soft_wrap=True).print(tree)


def to_dict(cfg: DictConfig, resolve: bool) -> dict[str, Any]:
    """A config mapping as plain dicts and lists (``OmegaConf.to_container``, typed as what a ``DictConfig`` gives)."""
    return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=resolve))


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a mapping (e.g. ``callbacks``, ``logger``), skipping nulls."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(node, _convert_="partial") for node in cfg.values()
            if isinstance(node, DictConfig) and "_target_" in node]


def with_values(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with ``values`` set (dotted keys, added where missing); ``cfg`` is left unchanged, so
    which config a step used never depends on the order of the steps. The copy is writable (``cfg`` may be the
    read-only config of :func:`lungexp.config.check`)."""
    changed = copy.deepcopy(cfg)
    OmegaConf.set_readonly(changed, False)
    with open_dict(changed):
        for key, value in values.items():
            OmegaConf.update(changed, key, value, merge=False, force_add=True)
    return changed


def dotted_leaves(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every option of a config node, nested ones included (``defaults`` lists are
    Hydra's, not options)."""
    for key, value in node.items():
        if key == "defaults":
            continue
        if isinstance(value, Mapping):
            yield from dotted_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
