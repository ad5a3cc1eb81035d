"""The composed config as MLflow params (settings that make runs differ) and tags (paths, bookkeeping).

Rules, so the compare page shows each setting once and nothing per-run:

- the option chosen in each config group is its own param (``model=resnet3d``, ``aug=light``);
- every other setting is a dotted param (``model.optimizer.lr``), logged once: a value that only
  points at another key (``data.train_transform: ${aug.train}``, ``data.split.seed: ${seed}``) is
  skipped, and a TorchIO pipeline is one readable param (``RandomFlip(...) | RandomAffine(...)``);
- paths (absolute paths, URIs, the ``paths`` group) and bookkeeping (``task_name``, ``ckpt_path``, ...)
  are tags, not params; the ``logger`` and ``hydra`` groups are not logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lungexp.utils.dictconfig import to_dict

NOT_LOGGED = ("logger", "hydra")
TAG_KEYS = ("paths", "task_name", "experiment_name", "ckpt_path", "extend_finished")  # where and under which name, not how
HYDRA_META_KEYS = ("_partial_", "_convert_", "_recursive_")
# `${some.key}`: the value is another key's, which is logged under that key already.
_REFERENCE = re.compile(r"^\$\{[\w.]+\}$")


def format_value(value: Any) -> str:
    """A config value as it would be written on the command line (``[16,32]``, ``null``, ``true``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def compact_transform(node: Mapping[str, Any]) -> str:
    """``{_target_: torchio.RandomAffine, degrees: 10, p: 0.5}`` -> ``RandomAffine(degrees=10,p=0.5)``;
    a ``Compose`` of such nodes -> the calls joined by `` | ``."""
    pipeline = _transform_list(node)
    if pipeline is not None:
        return " | ".join(compact_transform(item) for item in pipeline)
    args = ",".join(f"{key}={format_value(value)}" for key, value in node.items() if not key.startswith("_"))
    return f"{str(node['_target_']).rsplit('.', 1)[-1]}({args})"


def _is_target(node: Any) -> bool:
    return isinstance(node, Mapping) and "_target_" in node


def _transform_list(node: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The steps of a Compose-like node (one list of ``_target_`` nodes and nothing else), else None."""
    settings = {key: value for key, value in node.items() if not key.startswith("_")}
    if len(settings) != 1:
        return None
    (steps,) = settings.values()
    if isinstance(steps, list) and steps and all(_is_target(step) for step in steps):
        return steps
    return None


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and (os.path.isabs(value) or "://" in value)


def _leaves(raw: Any, resolved: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every setting, skipping references to other keys and Hydra's meta keys."""
    for key, value in resolved.items():
        raw_value = raw.get(key) if isinstance(raw, Mapping) else None
        if key in HYDRA_META_KEYS or (isinstance(raw_value, str) and _REFERENCE.match(raw_value)):
            continue
        name = f"{prefix}{key}"
        if _is_target(value) and _transform_list(value) is not None:
            yield name, compact_transform(value)
        elif isinstance(value, Mapping) and value:
            yield from _leaves(raw_value, value, f"{name}.")
        else:
            yield name, value


def split_config(cfg: DictConfig) -> tuple[dict[str, str], dict[str, str]]:
    """``(params, tags)`` of a composed config, as strings (see the module docstring for the rules)."""
    raw = to_dict(cfg, resolve=False)
    resolved = to_dict(cfg, resolve=True)
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    for key, value in _leaves(raw, resolved):
        group = key.split(".", 1)[0]
        if group in NOT_LOGGED:
            continue
        target = tags if group in TAG_KEYS or _is_path(value) else params
        target[key] = format_value(value)
    return params, tags


def group_choices() -> dict[str, str]:
    """The option selected in each config group (``{"model": "resnet3d", "aug": "light", ...}``), from
    Hydra's runtime choices; empty outside a Hydra run."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {group: str(option) for group, option in choices.items()
            if option is not None and not group.startswith("hydra/") and group not in NOT_LOGGED + TAG_KEYS}


def config_hash(params: Mapping[str, str]) -> str:
    """Short hash of the settings: equal for two runs with the same settings, whatever their paths."""
    return hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:12]
