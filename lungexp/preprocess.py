"""Build the patch cache ahead of training: ``python -m lungexp.preprocess data=luna16 data.root=DIR``.

Takes the same config (and overrides) as ``lungexp.run``; training builds a missing cache itself,
so this is for doing the slow part once, e.g. before a sweep or on a machine with more cores
(``data.preprocess_workers=16``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungexp.config.command_line import checks_command_line_keys
from lungexp.config.keys import report_user_errors
from lungexp.config.store import register_configs
from lungexp.utils.dictconfig import CONFIG_DIR
from lungexp.utils.errors import ConfigError

register_configs()  # the resolvers and Python-declared nodes conf/ composes with, before @hydra.main


@checks_command_line_keys("config")
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> None:
    # Imported here, as in lungexp.run: data.* is checked before torch/Lightning are imported.
    from lungexp.config.check import check

    checked = check(cfg, "preprocess")
    from lungexp.data.loading.datamodule import NoduleDataModule
    from lungexp.data.patches.cache import PatchCache

    assert checked.data is not None, "check() builds the data options of preprocess"
    if not checked.data.images:
        raise ConfigError("model=tabular (data.images=false) reads no image: there is no patch cache to build; "
                          "train it directly with lungexp.run")
    datamodule = NoduleDataModule.from_options(checked.data)
    cache = datamodule.build_cache()
    assert isinstance(cache, PatchCache), "data.images=true builds a patch cache"
    labels = cache.index["label"]
    print(f"Patch cache: {cache.folder}\n  {len(cache)} patches of shape {tuple(cache.patches.shape[1:])} "
          f"from {cache.index['seriesuid'].nunique()} scans ({int(labels.sum())} positive, "
          f"{int((labels == 0).sum())} negative)")


if __name__ == "__main__":
    main()
