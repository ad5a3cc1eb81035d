"""Every config key that lungexp's messages name (``data.split.fold``, ``model.pos_weight``, ...) exists.

A message that sends a user to a key that does not exist is worse than no advice: the source is
scanned for dotted keys of the config groups in string literals, and each must be a key of a
composed config (every option of every group is composed).
"""

from __future__ import annotations

import ast
import re

import pytest
from omegaconf import OmegaConf

from lungexp.tracking.callback import MODEL_URI_TAG
from lungexp.tracking.provenance import DATA_FINGERPRINT_TAG
from tests.helpers.config import CONFIG_DIR, PROJECT_ROOT, compose_config

# Config groups: the folders of conf/.
GROUPS = tuple(sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir()))
# A dotted key of a config group, not part of a longer dotted name (lungexp.data.scans is a module) and not
# added by a `+key=value` override (a key the config does not have yet), nor a file path (docs/data.md).
KEY = re.compile(rf"(?<![\w.+/])((?:{'|'.join(GROUPS)})(?:\.[A-Za-z_]\w*)+)")
TAGS = {MODEL_URI_TAG, DATA_FINGERPRINT_TAG}  # MLflow tag names that look like config keys
# Options that are null by default and have keys of their own once set.
SET_OPTIONAL = ("eval.strata={column: diameter_mm, edges: [0]}",)


def named_keys() -> dict[str, str]:
    """Key -> ``file:line`` of its first mention in a string literal (f-string parts included)."""
    found: dict[str, str] = {}
    for path in sorted((PROJECT_ROOT / "lungexp").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for key in set(KEY.findall(node.value)) - TAGS:
                    found.setdefault(key, f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    return found


def config_keys(node: object, prefix: str = "") -> set[str]:
    """Every dotted key of a plain config container, inner nodes included."""
    if not isinstance(node, dict):
        return set()
    keys = set()
    for name, value in node.items():
        keys |= {f"{prefix}{name}", *config_keys(value, f"{prefix}{name}.")}
    return keys


@pytest.fixture(scope="module")
def every_config_key(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    root = tmp_path_factory.mktemp("keys")
    keys: set[str] = set()
    for group in GROUPS:
        for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
            cfg = compose_config([f"{group}={option}", f"data.root={root}"], root)
            keys |= config_keys(OmegaConf.to_container(cfg, resolve=False))
    cfg = compose_config([*SET_OPTIONAL, f"data.root={root}"], root)
    return keys | config_keys(OmegaConf.to_container(cfg, resolve=False))


def test_the_scan_finds_the_keys_messages_name() -> None:
    keys = named_keys()
    assert {"data.split.method", "data.split.fold", "data.outside", "data.root"} <= set(keys)
    assert not any(key.startswith("data.io") for key in keys)  # module paths are not keys


def test_every_key_named_in_a_message_exists(every_config_key: set[str]) -> None:
    missing = {key: where for key, where in named_keys().items() if key not in every_config_key}
    assert not missing, f"messages name config keys that do not exist: {missing}"
