"""scikit-learn's bundled handwritten digits (1797 8x8 images, no download) as a DataModule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .base import MimDataModule
from .views import ViewPair

Split = tuple[torch.Tensor, torch.Tensor]


def digit_splits(size: int, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """The bundled digits, upsampled and split (stratified, seeded) into train and val.

    Returns:
        ``((train_images, train_labels), (val_images, val_labels))``; images are floats in
        ``[0, 1]`` of shape ``(N, 1, size, size)``, labels long ``(N,)``.
    """
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    train_idx, val_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=val_fraction,
        random_state=seed,
        stratify=labels.numpy(),
    )
    images = F.interpolate(images, size=(size, size), mode="bicubic").clamp(0.0, 1.0)
    train, val = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return (images[train], labels[train]), (images[val], labels[val])


class TensorImageDataset(Dataset):
    """In-memory single-channel images, transformed per sample and repeated to ``channels``.

    Args:
        images: Float images in ``[0, 1]``, shape ``(N, 1, H, W)``.
        labels: Long labels, shape ``(N,)``.
        transform: Maps a ``(1, H, W)`` tensor to a ``(1, S, S)`` tensor.
        channels: Output channels ``C`` (the single channel is repeated).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor],
        channels: int = 3,
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        out = self.transform(self.images[index])
        if isinstance(out, list):  # a view pair (see mimkit.data.views)
            views = [view.repeat(self.channels, 1, 1) for view in out]
            return {"pixels": views[0], "views": views, "label": int(self.labels[index])}
        return {"pixels": out.repeat(self.channels, 1, 1), "label": int(self.labels[index])}


class Digits(MimDataModule):
    """Handwritten digits 0-9 from ``sklearn.datasets.load_digits``, upsampled to ``img_size``.

    The 8x8 images (gray levels 0..16) are scaled to ``[0, 1]``, upsampled once with bicubic
    interpolation (clamped to ``[0, 1]``) and kept in memory; each sample is repeated to 3
    channels. The split is stratified and seeded. Normalization mean/std are computed on the
    (un-augmented) train split and are the same for the 3 channels. Training augmentation is a
    light random resized crop only: no horizontal flip, since mirroring changes a digit's
    identity (a flipped 2 or 7 is not a 2 or 7). Validation/test: normalization only.

    Batches: ``{"pixels": (B, 3, img_size, img_size) float, "label": (B,) long}``.

    Args:
        img_size: Output side length.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        val_fraction: Fraction of the 1797 images held out for validation.
        seed: Seed of the train/val split.
        crop_scale: Area fraction range of the training random resized crop.
        pin_memory: Pin host memory when CUDA is available.
        views: Two-view augmentation of the training split (then batches also carry
            ``"views"``), e.g. ``PixelShiftViews(max_shift=4, flip=False)``.
    """

    def __init__(
        self,
        img_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        pin_memory: bool = True,
        views: ViewPair | None = None,
    ) -> None:
        (train_images, train_labels), (val_images, val_labels) = digit_splits(
            img_size, val_fraction, seed
        )
        mean, std = train_images.mean().item(), train_images.std().item()
        super().__init__(
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=(mean,) * 3,
            std=(std,) * 3,
            num_classes=10,
            views=views,
        )
        self.save_hyperparameters(ignore=["views"])
        self.val_fraction = val_fraction
        self.seed = seed
        self.crop_scale = crop_scale
        normalize = v2.Normalize([mean], [std])
        self.train_dataset = TensorImageDataset(
            train_images,
            train_labels,
            v2.Compose(
                [v2.RandomResizedCrop(img_size, scale=crop_scale, antialias=True), normalize]
            )
            if views is None
            else views.build(img_size, [mean], [std]),
        )
        self.val_dataset = TensorImageDataset(val_images, val_labels, normalize)
