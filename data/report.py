"""Callback reporting the samples a DataModule skipped because their files were unreadable."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn


class ReportSkippedSamples(L.Callback):
    """Log and warn about skipped samples at the end of each train / validation / test epoch.

    Reads ``trainer.datamodule.skipped_samples`` (``dict[str, int]`` keyed by stage) and
    ``trainer.datamodule.skipped_paths`` (``dict[str, list[str]]``), duck-typed: a datamodule
    without them is ignored. Logs ``data/skipped_<stage>`` (summed over ranks), emits one
    warning naming the total and a few failing paths (this rank's) when any were skipped, and
    resets the stage's tally for the next epoch.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = trainer.state.stage
        self._report(trainer, pl_module, stage.value if stage is not None else "validate")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        counts = getattr(datamodule, "skipped_samples", None)
        if not isinstance(counts, dict):
            return
        paths_by_stage = getattr(datamodule, "skipped_paths", {})
        local = int(counts.get(stage, 0))
        paths = list(paths_by_stage.get(stage, [])) if isinstance(paths_by_stage, dict) else []
        local_count = torch.tensor(float(local), device=pl_module.device)
        total = int(trainer.strategy.reduce(local_count, reduce_op="sum").item())
        pl_module.log(f"data/skipped_{stage}", float(local), reduce_fx="sum", sync_dist=True)
        if total:
            examples = ", ".join(paths) if paths else "none on rank 0"
            rank_zero_warn(
                f"Skipped {total} unreadable sample(s) during {stage} epoch "
                f"{trainer.current_epoch}; e.g. {examples}"
            )
        counts[stage] = 0
        if isinstance(paths_by_stage, dict):
            paths_by_stage[stage] = []
