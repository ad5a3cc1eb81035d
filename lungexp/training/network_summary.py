"""Lightning's model summary, printed when a fit starts, with the network's real FLOPs."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary import get_human_readable_count

from lungexp.data.loading.datamodule import NoduleDataModule
from lungexp.training.module import NoduleClassifier

NETWORK = "net"  # the NoduleClassifier's attribute holding the network: its row of the summary
FLOPS = "FLOPs"  # Lightning's column
REFERENCE_PATCH = 32  # model_info.flops_32's


class NetworkSummary(RichModelSummary):
    """Lightning's rich model summary (each top-level module's parameters and mode; trainable, frozen and total
    parameters and their size) with the FLOPs of one sample of the run's patch size (``data.patch.size``; 32³ with
    a datamodule of another kind) through the network in its row and the total
    (:meth:`~lungexp.training.module.NoduleClassifier.network_flops`). Lightning counts FLOPs only by running an
    ``example_input_array`` through the batch hooks, which a :class:`~lungexp.training.module.NoduleClassifier`
    has not, and would print 0.

    :func:`~lungexp.training.pipeline.build` gives the Trainer this one instead of Lightning's own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._network_flops: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, NoduleClassifier):
            datamodule = getattr(trainer, "datamodule", None)
            patch = datamodule.options.patch.size if isinstance(datamodule, NoduleDataModule) else REFERENCE_PATCH
            self._network_flops = pl_module.network_flops(patch)
        super().on_fit_start(trainer, pl_module)

    # Static in Lightning, which calls it on the callback: here a method, to read the FLOPs on_fit_start counted.
    def summarize(self, summary_data: list[tuple[str, list[str]]], total_parameters: int,  # type: ignore[override]
                  trainable_parameters: int, model_size: float, total_training_modes: dict[str, int],
                  total_flops: int, **summarize_kwargs: Any) -> None:
        """Lightning's summary, with the network's FLOPs where Lightning has none."""
        if self._network_flops is not None:
            columns = dict(summary_data)
            flops = [get_human_readable_count(self._network_flops) if name == NETWORK else value
                     for name, value in zip(columns["Name"], columns[FLOPS], strict=True)]
            summary_data = [(column, flops if column == FLOPS else values) for column, values in summary_data]
            total_flops = self._network_flops
        RichModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                   total_training_modes, total_flops, **summarize_kwargs)
