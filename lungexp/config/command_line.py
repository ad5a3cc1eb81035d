"""The command line's keys, checked before Hydra runs: a misspelt key (``max_epoch=3`` under ``trainer``) is one
``error:`` line naming the key it was likely meant to be, where Hydra would print six lines ending in "To append to
your config use +..." — advice to add the typo as a new key, which the checks would then refuse.

Each Hydra entry point (``run``, ``preprocess``, ``evaluate``, ``predict``, ``register``) wraps its ``@hydra.main``
function with :func:`checks_command_line_keys`. The check composes the config as Hydra will (one composition,
~0.1 s, only when the command line has overrides; one more per changed key when that fails); anything it cannot
judge (a sweep, another config, Hydra's flags, a composition that fails otherwise) is left to Hydra, which reports
it as before."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lungexp.utils.errors import ConfigError, did_you_mean, report_user_errors

Entry = TypeVar("Entry", bound=Callable[..., Any])


def checks_command_line_keys(config_name: str) -> Callable[[Entry], Entry]:
    """Decorate a ``@hydra.main`` function so that, called from the command line (no arguments), it first checks
    the keys :func:`misspelt_key` finds in ``sys.argv`` (against ``conf/<config_name>.yaml``)."""

    def decorate(hydra_main: Entry) -> Entry:
        @functools.wraps(hydra_main)
        def entry(*args: Any, **kwargs: Any) -> Any:
            if not args and not kwargs:  # a caller handing in a config (Hydra's passthrough) is no command line
                report_user_errors(_refuse_misspelt_key)(config_name, sys.argv[1:])
            return hydra_main(*args, **kwargs)

        return entry  # type: ignore[return-value]

    return decorate


def _refuse_misspelt_key(config_name: str, argv: Sequence[str]) -> None:
    message = misspelt_key(config_name, argv)
    if message is not None:
        raise ConfigError(message)


def misspelt_key(config_name: str, argv: Sequence[str]) -> str | None:
    """The message for the first override of ``argv`` that changes a key the composed config does not have (a
    group option it selects is no such change), or None."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:  # Hydra says what is wrong with its own flags
        return None
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.multirun or args.config_name
            or args.config_dir or args.config_path or args.experimental_rerun):
        return None
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return None
    changed = [o for o in overrides if not (o.is_add() or o.is_force_add() or o.is_delete())
               and not o.key_or_group.startswith(("hydra.", "hydra/"))]
    lines = [str(o.input_line) for o in overrides]
    if not changed or any(o.is_sweep_override() for o in overrides) or _composed(config_name, lines) is not None:
        return None  # the usual case: one composition, and Hydra runs
    for override in changed:
        others = [o.input_line for o in overrides if o is not override and o.input_line is not None]
        cfg = _composed(config_name, others)
        if cfg is None:  # still failing without this one: another override is to blame
            continue
        message = _unknown_key(cfg, override.key_or_group, str(override.input_line))
        if message is not None:
            return message
    return None


def _composed(config_name: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lungexp.utils.dictconfig import CONFIG_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException):
        return None
    finally:
        GlobalHydra.instance().clear()  # @hydra.main initialises its own


def _unknown_key(cfg: Any, key: str, override: str) -> str | None:
    """For ``key`` (dotted, or a top-level one) absent from ``cfg``, the message naming its first missing part and the nearest key;
    None where ``key`` is there, or is a config group Hydra selects (``data.label_rule=...``)."""
    from omegaconf import DictConfig

    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):  # a value with no keys: Hydra's own message says so
            return None
        if part not in node:
            parent = ".".join(parts[:depth])
            where = f"{parent} has no key '{part}'" if parent else f"there is no top-level key '{part}'"
            return f"{override} on the command line: {where}{did_you_mean(part, node.keys())}"
        node = node._get_node(part)
    return None
