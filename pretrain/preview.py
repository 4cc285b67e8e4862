"""Reconstruction pictures during pretraining."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image

__all__ = ["ReconstructionPreview", "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Maps normalized ``(B, C, H, W)`` images back to ``[0, 1]``."""
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


class ReconstructionPreview(L.Callback):
    """Saves original / masked / reconstruction grids every ``every_n_steps`` steps.

    The same images (the first ones the run sees) and the same mask are used each
    time, so successive pictures show progress. PNGs go to
    ``<default_root_dir>/previews/step_XXXXXXX.png`` and, with a TensorBoard logger,
    to the ``previews/reconstruction`` image tag.

    Args:
        every_n_steps: optimizer steps between pictures (0 disables).
        num_images: rows in the grid.
        seed: seed of the mask drawn for the pictures.
    """

    def __init__(self, every_n_steps: int = 500, num_images: int = 8, seed: int = 0) -> None:
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.seed = seed
        self._pixels: Tensor | None = None
        self.saved: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps <= 0 or not hasattr(pl_module, "reconstruct"):
            return
        if self._pixels is None and isinstance(batch, dict) and "pixels" in batch:
            self._pixels = batch["pixels"][: self.num_images].detach().clone()
        step = trainer.global_step
        if self._pixels is None or step % self.every_n_steps or trainer.sanity_checking:
            return
        self.save(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if (
            self.every_n_steps > 0
            and self._pixels is not None
            and hasattr(pl_module, "reconstruct")
        ):
            self.save(trainer, pl_module, trainer.global_step)

    @rank_zero_only
    def save(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        path = os.path.join(trainer.default_root_dir, "previews", f"step_{step:07d}.png")
        if path in self.saved:
            return
        was_training = pl_module.training
        pl_module.eval()
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        pixels = self._pixels.to(pl_module.device)
        with torch.autocast(pl_module.device.type, enabled=False):
            views = pl_module.reconstruct(pixels, generator=generator)
        pl_module.train(was_training)
        datamodule = getattr(trainer, "datamodule", None)
        mean = getattr(datamodule, "mean", None) or IMAGENET_MEAN
        std = getattr(datamodule, "std", None) or IMAGENET_STD
        columns = [
            denormalize(views[k], mean, std) for k in ("original", "masked", "reconstruction")
        ]
        rows = torch.stack(columns, dim=1).flatten(0, 1)  # (B * 3, C, H, W)
        grid = make_grid(rows.cpu(), nrow=3, padding=2, pad_value=1.0)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_image(grid, path)
        self.saved.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("previews/reconstruction", grid, step)
