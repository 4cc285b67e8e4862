"""Reconstruction pictures during pretraining: image grids, video frame strips and GIFs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid, save_image

from .fsdp import SHARDED_STRATEGIES

__all__ = ["ReconstructionPreview", "denormalize", "video_frame_strip", "video_gif_frames"]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Maps normalized ``(B, C, H, W)`` images back to ``[0, 1]``."""
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


def _denormalize_video(video: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(B, C, T, H, W)`` normalized clips to ``(B, T, C, H, W)`` frames in ``[0, 1]``."""
    frames = video.transpose(1, 2)  # (B, T, C, H, W)
    return denormalize(frames.flatten(0, 1), mean, std).view_as(frames)


def video_frame_strip(
    views: dict[str, Tensor], mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """One picture of clips over time: per clip, rows original / masked / reconstruction.

    Args:
        views: ``original``, ``masked``, ``reconstruction``, each ``(B, C, T, H, W)``.

    Returns:
        ``(C, 3 * B * (H + 2) + 2, T * (W + 2) + 2)`` grid, time running left to right.
    """
    keys = ("original", "masked", "reconstruction")
    rows = torch.stack([_denormalize_video(views[k], mean, std) for k in keys], dim=1)
    frames = rows.shape[2]
    return make_grid(rows.flatten(0, 2).cpu(), nrow=frames, padding=2, pad_value=1.0)


def video_gif_frames(
    views: dict[str, Tensor], mean: Sequence[float], std: Sequence[float]
) -> list[Tensor]:
    """The same clips as an animation: frame ``t`` is a grid of B rows x 3 columns.

    Returns:
        ``T`` tensors ``(C, B * (H + 2) + 2, 3 * (W + 2) + 2)``.
    """
    keys = ("original", "masked", "reconstruction")
    rows = torch.stack([_denormalize_video(views[k], mean, std) for k in keys], dim=1)
    return [
        make_grid(rows[:, :, t].flatten(0, 1).cpu(), nrow=3, padding=2, pad_value=1.0)
        for t in range(rows.shape[2])
    ]


def save_gif(frames: list[Tensor], path: str, duration_ms: int = 250) -> None:
    """Writes ``(C, H, W)`` frames in ``[0, 1]`` as a looping GIF with PIL."""
    images = [to_pil_image(frame.clamp(0, 1)) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


class ReconstructionPreview(L.Callback):
    """Saves original / masked / reconstruction grids every ``every_n_steps`` steps.

    The same images (the first ones the run sees) and the same mask are used each
    time, so successive pictures show progress. For video (``(B, C, T, H, W)``
    pixels) the PNG is a frame strip, time left to right, rows original / masked /
    reconstruction per clip, and an animated ``step_XXXXXXX.gif`` is written beside it. PNGs go to
    ``<default_root_dir>/previews/step_XXXXXXX.png`` and, with a TensorBoard logger,
    to the ``previews/reconstruction`` image tag.

    Pictures are drawn by rank 0 alone, calling the model outside the training step. A
    strategy that shards the parameters (FSDP, DeepSpeed, model parallel) needs every rank
    in each forward pass, so under one the callback warns once and draws nothing.

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
        self._warned = False
        self.saved: list[str] = []

    def _enabled(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if self.every_n_steps <= 0 or not hasattr(pl_module, "reconstruct"):
            return False
        if isinstance(trainer.strategy, SHARDED_STRATEGIES):
            if not self._warned:
                rank_zero_warn(
                    f"ReconstructionPreview draws no pictures under {type(trainer.strategy).__name__}: "
                    "the parameters are sharded, so a forward pass needs every rank; set "
                    "preview.every_n_steps 0 to silence this"
                )
                self._warned = True
            return False
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._enabled(trainer, pl_module):
            return
        if self._pixels is None and isinstance(batch, dict) and "pixels" in batch:
            self._pixels = batch["pixels"][: self.num_images].detach().clone()
        step = trainer.global_step
        if self._pixels is None or step % self.every_n_steps or trainer.sanity_checking:
            return
        self.save(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._pixels is not None and self._enabled(trainer, pl_module):
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
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if views["original"].ndim == 5:
            grid = video_frame_strip(views, mean, std)
            gif = path[: -len(".png")] + ".gif"
            save_gif(video_gif_frames(views, mean, std), gif)
            self.saved.append(gif)
        else:
            columns = [
                denormalize(views[k], mean, std) for k in ("original", "masked", "reconstruction")
            ]
            rows = torch.stack(columns, dim=1).flatten(0, 1)  # (B * 3, C, H, W)
            grid = make_grid(rows.cpu(), nrow=3, padding=2, pad_value=1.0)
        save_image(grid, path)
        self.saved.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("previews/reconstruction", grid, step)
