"""Config nodes declared in Python and put in Hydra's ConfigStore, which ``conf/`` composes like its files.

``shared/data_options``: every ``data.*`` option with its default, from
:meth:`~lungexp.data.options.DataOptions.config_defaults`; ``conf/shared/datamodule.yaml`` starts from it, so
each option is declared once (its field in :class:`~lungexp.data.options.DataOptions`).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from lungexp.data.options import DataOptions

DATA_OPTIONS = "data_options"  # in group `shared`


def register_config_nodes() -> None:
    """Put the Python-declared nodes in Hydra's ConfigStore (idempotent): before any config is composed."""
    ConfigStore.instance().store(group="shared", name=DATA_OPTIONS, node=DataOptions.config_defaults())
