"""Moving digits: scikit-learn's bundled handwritten digits moving across a canvas (no download)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from .base import MimDataModule
from .digits import digit_splits

#: Motion directions, counter-clockwise from east in 45 degree steps (image y points down).
DIRECTIONS: tuple[str, ...] = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")


class MovingDigitsDataset(Dataset):
    """Clips of one digit moving in a straight line, deterministic per index.

    Sample ``i`` (seeded by ``seed + i``) picks a digit image, one of the 8
    :data:`DIRECTIONS` and a start position such that the digit stays on the canvas for
    all frames; frame ``t`` shows the digit displaced by ``round(t * speed * (cos, -sin))``.

    Args:
        digits: ``(M, 1, d, d)`` digit images in ``[0, 1]``.
        labels: ``(M,)`` digit classes.
        length: Clips in the dataset.
        num_frames: Frames ``T``.
        img_size: Canvas side ``S``.
        speed: Pixels per frame.
        seed: Base seed.
        mean: Normalization mean (one value, all channels).
        std: Normalization std.
        channels: Output channels (the gray canvas repeated).
        label: Which label is ``"label"``: ``digit`` (10 classes) or ``direction`` (8).
    """

    def __init__(
        self,
        digits: torch.Tensor,
        labels: torch.Tensor,
        length: int,
        num_frames: int,
        img_size: int,
        speed: float,
        seed: int,
        mean: float = 0.0,
        std: float = 1.0,
        channels: int = 3,
        label: Literal["digit", "direction"] = "digit",
    ) -> None:
        size = digits.shape[-1]
        if (num_frames - 1) * speed > img_size - size:
            raise ValueError(
                f"a {size}px digit moving {speed}px/frame for {num_frames} frames leaves a "
                f"{img_size}px canvas; lower speed or num_frames, or raise img_size"
            )
        self.digits = digits
        self.labels = labels
        self.length = length
        self.num_frames = num_frames
        self.img_size = img_size
        self.speed = speed
        self.seed = seed
        self.mean = mean
        self.std = std
        self.channels = channels
        self.label = label

    def __len__(self) -> int:
        return self.length

    def render(self, index: int) -> tuple[torch.Tensor, int, int]:
        """``(T, S, S)`` frames in ``[0, 1]``, the digit class and the direction of clip ``index``."""
        generator = torch.Generator().manual_seed(self.seed + index)
        which = int(torch.randint(len(self.digits), (1,), generator=generator))
        direction = int(torch.randint(len(DIRECTIONS), (1,), generator=generator))
        angle = direction * math.pi / 4
        t = torch.arange(self.num_frames, dtype=torch.float64)
        dx = (t * self.speed * math.cos(angle)).round().long()
        dy = (-t * self.speed * math.sin(angle)).round().long()
        size = self.digits.shape[-1]
        room = self.img_size - size
        x_low, x_high = -int(dx.min()), room - int(dx.max())
        y_low, y_high = -int(dy.min()), room - int(dy.max())
        x0 = x_low + int(torch.randint(x_high - x_low + 1, (1,), generator=generator))
        y0 = y_low + int(torch.randint(y_high - y_low + 1, (1,), generator=generator))
        frames = torch.zeros(self.num_frames, self.img_size, self.img_size)
        digit = self.digits[which, 0]
        for k in range(self.num_frames):
            x, y = x0 + int(dx[k]), y0 + int(dy[k])
            frames[k, y : y + size, x : x + size] = digit
        return frames, int(self.labels[which]), direction

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        frames, digit, direction = self.render(index)
        pixels = ((frames - self.mean) / self.std).unsqueeze(0).repeat(self.channels, 1, 1, 1)
        return {
            "pixels": pixels,  # (C, T, S, S)
            "label": digit if self.label == "digit" else direction,
            "digit": digit,
            "direction": direction,
        }


class MovingDigits(MimDataModule):
    """Moving handwritten digits: a video source for CPU quickstarts and tests.

    The 1797 8x8 digits of ``sklearn.datasets.load_digits`` are split (stratified, seeded)
    into train and validation images, upsampled to ``digit_size`` and moved across an
    ``img_size`` canvas for ``num_frames`` frames in one of 8 directions. Clips are
    rendered on the fly, deterministically per index. Batches:
    ``{"pixels": (B, 3, T, S, S), "label": (B,), "digit": (B,), "direction": (B,)}`` with
    ``"label"`` the digit class (10) or the motion direction (8, :data:`DIRECTIONS`).

    Args:
        img_size: Canvas side.
        num_frames: Frames per clip.
        digit_size: Side of the upsampled digit.
        speed: Pixels per frame.
        num_samples: Training clips per epoch.
        num_val_samples: Validation clips (0 for none).
        label: ``digit`` or ``direction``.
        batch_size: Clips per batch.
        num_workers: DataLoader worker processes.
        val_fraction: Fraction of the digit images held out for validation clips.
        seed: Seed of the split and of the clips.
        pin_memory: Pin host memory when CUDA is available.
    """

    def __init__(
        self,
        img_size: int = 32,
        num_frames: int = 8,
        digit_size: int = 16,
        speed: float = 2.0,
        num_samples: int = 2048,
        num_val_samples: int = 256,
        label: Literal["digit", "direction"] = "digit",
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        seed: int = 0,
        pin_memory: bool = True,
    ) -> None:
        (train_images, train_labels), (val_images, val_labels) = digit_splits(
            digit_size, val_fraction, seed
        )
        args = (num_frames, img_size, speed)
        probe = MovingDigitsDataset(train_images, train_labels, 64, *args, seed)
        stack = torch.stack([probe.render(i)[0] for i in range(64)])
        mean, std = stack.mean().item(), stack.std().item()
        super().__init__(
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=(mean,) * 3,
            std=(std,) * 3,
            num_classes=10 if label == "digit" else len(DIRECTIONS),
        )
        self.save_hyperparameters()
        self.num_frames = num_frames
        self.label = label
        self.train_dataset = MovingDigitsDataset(
            train_images, train_labels, num_samples, *args, seed, mean, std, label=label
        )
        if num_val_samples > 0:
            self.val_dataset = MovingDigitsDataset(
                val_images,
                val_labels,
                num_val_samples,
                *args,
                seed + num_samples,
                mean,
                std,
                label=label,
            )
