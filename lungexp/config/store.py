"""What composing ``conf/`` needs besides its files: the resolvers and the config nodes declared in Python.

``base_data_options``: every ``data.*`` option with its default, from
:meth:`~lungexp.data.options.DataOptions.config_defaults`; ``conf/base_datamodule.yaml`` starts from it, so
each option is declared once (its field in :class:`~lungexp.data.options.DataOptions`). At the root, as
``conf/base_*.yaml`` are: a part the options include, not a config group ``--help`` would list.

``hydra/help``: what ``--help`` prints. ``lungexp`` (``run``, ``preprocess``) lists the config groups;
``lungexp_checkpoint`` (``evaluate``, ``predict``, ``register``: their checkpoints bring the model and data) does
not, since Hydra would list every group of ``conf/``, which these commands do not take. Each primary config says
what its command does in ``hydra.help.header``.

Each entry point calls :func:`register_configs` when it is imported, before ``@hydra.main`` composes (and so
does any script or test composing ``conf/`` with Hydra's compose API); the package root does not, so that
importing the library loads no Hydra.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lungexp.data.labels.targets import optimized_metric
from lungexp.data.options import DataOptions
from lungexp.utils.dictconfig import register_resolvers

DATA_OPTIONS = "base_data_options"
_HELP_FOOTER = ("Every option: docs/ (make docs builds the pages into site/; docs/getting-started.md to start).\n"
                "Hydra's own flags: --hydra-help\n")
_HELP_CONFIG = "== Config ==\nOverride anything in the config (key=value)\n\n$CONFIG\n\n${hydra.help.footer}"
HELP = {
    "lungexp": "${hydra.help.header}\n== Configuration groups ==\nCompose your configuration from those groups "
               "(group=option)\n\n$APP_CONFIG_GROUPS\n\n" + _HELP_CONFIG,
    "lungexp_checkpoint": "${hydra.help.header}\n" + _HELP_CONFIG,
}


def register_configs() -> None:
    """Register the resolvers ``conf/`` uses and put the Python-declared nodes in Hydra's ConfigStore
    (idempotent): before any config is composed. ``${target_metric:${target}}``: the target's default
    ``optimized_metric`` (:func:`~lungexp.data.labels.targets.optimized_metric`)."""
    register_resolvers()
    if not OmegaConf.has_resolver("target_metric"):
        OmegaConf.register_new_resolver("target_metric", optimized_metric)
    store = ConfigStore.instance()
    store.store(name=DATA_OPTIONS, node=DataOptions.config_defaults())
    for name, template in HELP.items():
        store.store(group="hydra/help", name=name, node={"app_name": "${hydra.job.name}", "header": "",
                                                          "footer": _HELP_FOOTER, "template": template})
