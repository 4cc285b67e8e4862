"""Random tensors, deterministic per index: for benchmarks and tests, no files involved."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .base import MimDataModule
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .views import ViewPair


class SyntheticDataset(Dataset):
    """Standard-normal ("already normalized") pixels seeded by ``seed + index``.

    Args:
        shape: Per-sample pixel shape, ``(C, H, W)`` or ``(C, T, H, W)``.
        length: Number of samples.
        seed: Base seed; sample ``i`` uses ``torch.Generator().manual_seed(seed + i)``.
        num_classes: Labels are ``i % num_classes``; ``None`` for no ``"label"`` key.
        views: Optional view-pair transform of a ``(C, H, W)`` image in ``[0, 1]``; the
            random pixels are mapped there with ``mean`` / ``std`` first.
        mean: Per-channel mean the pixels are "normalized" with (for ``views``).
        std: Per-channel std (for ``views``).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        length: int,
        seed: int,
        num_classes: int | None,
        views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        self.shape = shape
        self.length = length
        self.seed = seed
        self.num_classes = num_classes
        self.views = views
        self.mean = torch.tensor(mean).view(-1, *([1] * (len(shape) - 1)))
        self.std = torch.tensor(std).view(-1, *([1] * (len(shape) - 1)))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        generator = torch.Generator().manual_seed(self.seed + index)
        sample: dict[str, Any] = {"pixels": torch.randn(self.shape, generator=generator)}
        if self.views is not None:
            image = (sample["pixels"] * self.std + self.mean).clamp(0.0, 1.0)
            sample["views"] = self.views(image)
            sample["pixels"] = sample["views"][0]
        if self.num_classes is not None:
            sample["label"] = index % self.num_classes
        return sample


class Synthetic(MimDataModule):
    """Random normalized images or video clips with ImageNet mean/std for denormalizing previews.

    Batches: ``{"pixels": (B, C, H, W) or (B, C, T, H, W) float, "label": (B,) long}``.
    Train sample ``i`` is seeded with ``seed + i``, validation sample ``i`` with
    ``seed + num_samples + i``, so the two splits differ.

    Args:
        img_size: Side length ``H = W``.
        channels: Channels ``C``.
        num_samples: Training samples per epoch.
        num_val_samples: Validation samples (0 for no validation).
        num_classes: Labels are ``index % num_classes``; ``None`` for an unlabeled source.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        num_frames: Frames ``T`` of video clips; ``None`` for images.
        seed: Base seed.
        pin_memory: Pin host memory when CUDA is available.
        views: Two-view augmentation of the training split (images only); batches then
            also carry ``"views"``.
    """

    def __init__(
        self,
        img_size: int = 224,
        channels: int = 3,
        num_samples: int = 1024,
        num_val_samples: int = 64,
        num_classes: int | None = 10,
        batch_size: int = 32,
        num_workers: int = 0,
        num_frames: int | None = None,
        seed: int = 0,
        pin_memory: bool = True,
        views: ViewPair | None = None,
    ) -> None:
        mean = IMAGENET_MEAN if channels == 3 else (0.5,) * channels
        std = IMAGENET_STD if channels == 3 else (0.5,) * channels
        super().__init__(
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=mean,
            std=std,
            num_classes=num_classes,
            views=views,
        )
        self.save_hyperparameters(ignore=["views"])
        self.channels = channels
        self.num_frames = num_frames
        self.num_samples = num_samples
        self.num_val_samples = num_val_samples
        self.seed = seed
        shape = (channels, img_size, img_size)
        if num_frames is not None:
            shape = (channels, num_frames, img_size, img_size)
        view_transform = None
        if views is not None:
            if num_frames is not None:
                raise ValueError("Synthetic views are for images; set num_frames=None")
            view_transform = views.build(img_size, mean, std)
        self.train_dataset = SyntheticDataset(
            shape, num_samples, seed, num_classes, view_transform, mean, std
        )
        if num_val_samples > 0:
            self.val_dataset = SyntheticDataset(
                shape, num_val_samples, seed + num_samples, num_classes
            )
