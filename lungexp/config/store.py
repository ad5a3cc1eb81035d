"""What composing ``conf/`` needs besides its files: the resolvers and the config nodes declared in Python.

``base_data_options``: every ``data.*`` option with its default, from
:meth:`~lungexp.data.options.DataOptions.config_defaults`; ``conf/base_datamodule.yaml`` starts from it, so
each option is declared once (its field in :class:`~lungexp.data.options.DataOptions`). At the root, as
``conf/base_*.yaml`` are: a part the options include, not a config group ``--help`` would list.

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


def register_configs() -> None:
    """Register the resolvers ``conf/`` uses and put the Python-declared nodes in Hydra's ConfigStore
    (idempotent): before any config is composed. ``${target_metric:${target}}``: the target's default
    ``optimized_metric`` (:func:`~lungexp.data.labels.targets.optimized_metric`)."""
    register_resolvers()
    if not OmegaConf.has_resolver("target_metric"):
        OmegaConf.register_new_resolver("target_metric", optimized_metric)
    ConfigStore.instance().store(name=DATA_OPTIONS, node=DataOptions.config_defaults())
