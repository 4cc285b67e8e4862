"""Two-view augmentations for contrastive masked autoencoders, producing ``"views"``.

A :class:`ViewPair` is a configurable recipe (``class_path`` in YAML); a DataModule
calls :meth:`ViewPair.build` with its image size and normalization and gets a
callable mapping one image (PIL, or a float tensor ``(C, H, W)`` in ``[0, 1]``) to a
list of two normalized float tensors ``(C, S, S)``. Transforms whose views are augmented
independently (``TwoCropViews``) also take two images, one per view: the two frames of a
video that :class:`~mimkit.data.video.VideoFolder` pairs for ViC-MAE. Datasets then emit
``{"pixels": views[0], "views": [view_0, view_1], ...}``; collation stacks each view.
Randomness comes from torch's generator, which the training sampler seeds per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

__all__ = ["ViewPair", "PixelShiftViews", "TwoCropViews", "pixel_shift_pair"]

ViewTransform = Callable[[Any], list[Tensor]]


def _to_float() -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def _color(jitter: tuple[float, float, float, float], p_jitter: float, p_gray: float) -> list:
    return [
        v2.RandomApply([v2.ColorJitter(*jitter)], p=p_jitter),
        v2.RandomGrayscale(p=p_gray),
    ]


def pixel_shift_pair(image: Tensor, size: int, max_shift: int) -> tuple[Tensor, Tensor]:
    """Two ``size x size`` crops of ``image``: at the top-left corner, and shifted.

    The shift is drawn uniformly in ``[0, max_shift]`` pixels along each axis (CMAE),
    so the two crops overlap by at least ``(size - max_shift)^2`` pixels.

    Args:
        image: ``(C, H, W)`` with ``H, W >= size + max_shift``.
        size: crop side.
        max_shift: largest shift in pixels.

    Returns:
        ``(online, target)`` crops, ``(C, size, size)`` each.
    """
    if min(image.shape[-2:]) < size + max_shift:
        raise ValueError(
            f"image {tuple(image.shape)} too small for size {size} + shift {max_shift}"
        )
    dy, dx = (int(v) for v in torch.randint(0, max_shift + 1, (2,)))
    online = image[..., :size, :size]
    target = image[..., dy : dy + size, dx : dx + size]
    return online, target


def _clamp(image: Tensor) -> Tensor:
    return image.clamp(0.0, 1.0)  # bicubic resampling overshoots [0, 1]


_clamp01 = v2.Lambda(_clamp)


class _ShiftedPair:
    """Picklable transform: base crop, then online / shifted target views."""

    def __init__(self, base, online, target, size: int, max_shift: int) -> None:
        self.base, self.online, self.target = base, online, target
        self.size, self.max_shift = size, max_shift

    def __call__(self, image: Any) -> list[Tensor]:
        online, target = pixel_shift_pair(self.base(image), self.size, self.max_shift)
        return [self.online(online), self.target(target)]


class _Independent:
    """Picklable transform: two independently augmented views, of one image or of two
    (two frames of a video, ViC-MAE)."""

    def __init__(self, first, second) -> None:
        self.first, self.second = first, second
        self.pairs_frames = True

    def __call__(self, image: Any, other: Any = None) -> list[Tensor]:
        return [self.first(image), self.second(image if other is None else other)]


class ViewPair:
    """Base class of two-view augmentation recipes."""

    def build(self, img_size: int, mean: Sequence[float], std: Sequence[float]) -> ViewTransform:
        """The per-image transform for output side ``img_size`` and a normalization."""
        raise NotImplementedError


class PixelShiftViews(ViewPair):
    """CMAE's views: one random resized crop, then two crops shifted by a few pixels.

    As in the official CMAE data pipeline: a random resized crop (and flip) to
    ``img_size + max_shift + 1`` (256 for 224 with a 31 px shift); the online view
    is its top-left ``img_size`` crop with no further augmentation; the target view is
    a crop shifted by ``[0, max_shift]`` pixels per axis with colour jitter
    (brightness/contrast/saturation 0.4, hue 0.1, p = 0.8), grayscale (p = 0.2) and
    Gaussian blur (sigma 0.1 to 2, p = 0.5).

    Args:
        max_shift: largest shift in pixels (31 at 224 px).
        scale: area range of the random resized crop.
        flip: random horizontal flip (off for digits, whose mirror images change class).
        color: the target view's colour jitter, grayscale and blur.
    """

    def __init__(
        self,
        max_shift: int = 31,
        scale: tuple[float, float] = (0.2, 1.0),
        flip: bool = True,
        color: bool = True,
    ) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.scale = tuple(scale)
        self.flip = flip
        self.color = color

    def build(self, img_size: int, mean: Sequence[float], std: Sequence[float]) -> ViewTransform:
        base = [
            _to_float(),
            v2.RandomResizedCrop(
                img_size + self.max_shift + 1,
                scale=self.scale,
                interpolation=InterpolationMode.BICUBIC,
                antialias=True,
            ),
        ]
        if self.flip:
            base.append(v2.RandomHorizontalFlip())
        base_transform = v2.Compose(base)
        target_aug: list = []
        if self.color:
            blur = v2.GaussianBlur(kernel_size=2 * (img_size // 20) + 1, sigma=(0.1, 2.0))
            target_aug = [*_color((0.4, 0.4, 0.4, 0.1), 0.8, 0.2), v2.RandomApply([blur], p=0.5)]
        target_transform = v2.Compose([*target_aug, _clamp01, v2.Normalize(mean, std)])
        online_transform = v2.Compose([_clamp01, v2.Normalize(mean, std)])
        return _ShiftedPair(
            base_transform, online_transform, target_transform, img_size, self.max_shift
        )

    def __repr__(self) -> str:
        return f"PixelShiftViews(max_shift={self.max_shift}, scale={self.scale}, flip={self.flip})"


class TwoCropViews(ViewPair):
    """ViC-MAE's image views: two independent random resized crops with SimCLR colour.

    Each view: random resized crop, horizontal flip, colour jitter (0.4, 0.4, 0.2,
    0.1, p = 0.8) and grayscale (p = 0.2); Gaussian blur (always; kernel 5 x 9, sigma 0.1
    to 2) on the first view and solarization (p = 0.2) on the second, as in the official
    pipeline.

    Args:
        scale: area range of each crop (0.08 to 1, torchvision's default, as in ViC-MAE).
        flip: random horizontal flip.
        color: colour jitter, grayscale, blur and solarization.
    """

    def __init__(
        self, scale: tuple[float, float] = (0.08, 1.0), flip: bool = True, color: bool = True
    ) -> None:
        self.scale = tuple(scale)
        self.flip = flip
        self.color = color

    def _one(self, img_size: int, mean, std, extra: list) -> v2.Compose:
        steps: list = [
            _to_float(),
            v2.RandomResizedCrop(
                img_size, scale=self.scale, interpolation=InterpolationMode.BICUBIC, antialias=True
            ),
        ]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        if self.color:
            steps += [*_color((0.4, 0.4, 0.2, 0.1), 0.8, 0.2), *extra]
        return v2.Compose([*steps, _clamp01, v2.Normalize(mean, std)])

    def build(self, img_size: int, mean: Sequence[float], std: Sequence[float]) -> ViewTransform:
        blur = v2.GaussianBlur(kernel_size=(5, 9), sigma=(0.1, 2.0))  # ViC-MAE's pretrain.py
        first = self._one(img_size, mean, std, [blur])
        second = self._one(img_size, mean, std, [v2.RandomSolarize(0.5, p=0.2)])
        return _Independent(first, second)

    def __repr__(self) -> str:
        return f"TwoCropViews(scale={self.scale}, flip={self.flip})"
