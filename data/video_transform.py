"""The video clip transform: VideoMAE's multi-scale crop or MAE-ST's resized crop, flip,
RandAugment and erasing per clip, normalization; evaluation crops."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as TF

from .transforms import IMAGENET_MEAN, IMAGENET_STD

#: VideoMAE's multi-scale crop: crop sides are these fractions of the short side.
MULTI_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


#: VideoMAE's 13 fixed crop positions (``fix_crop`` with ``more_fix_crop``), in quarters
#: of the room left on each axis: corners, centre, edge midpoints and quarter points.
FIXED_CROP_POSITIONS: tuple[tuple[int, int], ...] = (
    (0, 0), (0, 4), (4, 0), (4, 4), (2, 2),
    (2, 0), (2, 4), (4, 2), (0, 2),
    (1, 1), (1, 3), (3, 1), (3, 3),
)  # fmt: skip


def multi_scale_crop_box(
    height: int,
    width: int,
    scales: Sequence[float] = MULTI_SCALES,
    max_distort: int = 1,
    generator: torch.Generator | None = None,
    output_size: int | None = None,
    fix_crop: bool = True,
) -> tuple[int, int, int, int]:
    """VideoMAE's multi-scale crop (``GroupMultiScaleCrop``): ``(top, left, crop_h, crop_w)``.

    Crop height and width are drawn from ``scales`` times the short side (a side within
    3 px of ``output_size`` becomes ``output_size``), at most ``max_distort`` steps apart in
    the list. The box sits at one of :data:`FIXED_CROP_POSITIONS` (``fix_crop``, VideoMAE's
    default), or anywhere with ``fix_crop=False``.
    """
    short = min(height, width)
    sizes = [int(short * s) for s in scales]
    if output_size is not None:
        snapped = min(output_size, short)
        sizes = [snapped if abs(size - output_size) < 3 else size for size in sizes]
    pairs = [
        (h, w)
        for i, h in enumerate(sizes)
        for j, w in enumerate(sizes)
        if abs(i - j) <= max_distort
    ]
    crop_h, crop_w = pairs[int(torch.randint(len(pairs), (1,), generator=generator))]
    if not fix_crop:
        top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
        return top, left, crop_h, crop_w
    row, col = FIXED_CROP_POSITIONS[
        int(torch.randint(len(FIXED_CROP_POSITIONS), (1,), generator=generator))
    ]
    return row * ((height - crop_h) // 4), col * ((width - crop_w) // 4), crop_h, crop_w


class VideoClipTransform:
    """``(T, H, W, 3)`` uint8 frames to a normalized ``(3, T, S, S)`` float clip.

    Training: multi-scale crop (VideoMAE) or, with ``area_scale``, a random resized crop
    of that area fraction and aspect ratio in ``[3/4, 4/3]`` (MAE-ST), resized to ``S``;
    horizontal flip with probability 0.5 when ``flip``; evaluation: short side resized to ``S``,
    center crop. Crops and resizes run on the uint8 frames (antialiased, as the reference
    pipelines' PIL / OpenCV resizes, and about twice as fast as on floats); then ``/255`` and
    per-channel normalization in one pass. The same crop and flip apply to every frame.

    Fine-tuning augmentation (VideoMAE's recipe; training only, off by default): RandAugment
    on the uint8 frames before the crop and random erasing after normalization, each drawn
    once per clip so every frame gets the same operations, magnitudes and erased box
    (VideoMAE's ``cube`` erasing), from torchvision's v2 transforms on a ``Video``.

    Args:
        img_size: Output side ``S``.
        train: Training augmentation or evaluation crop.
        mean: Per-channel mean (of ``[0, 1]`` pixels).
        std: Per-channel std.
        flip: Random horizontal flip (off for Something-Something, where it changes labels).
        scales: Multi-scale crop fractions of the short side.
        area_scale: Area fraction range of a random resized crop, instead of multi-scale.
        rand_augment_ops: RandAugment operations per clip (VideoMAE: 4); 0 disables it.
        rand_augment_magnitude: Their magnitude on timm's 0-10 scale (VideoMAE: 7),
            mapped to torchvision's 31 bins (7 -> bin 21).
        random_erasing: Probability of erasing one box with per-pixel normal noise
            (VideoMAE: 0.25); area 2-33% of the frame, aspect ratio 0.3-3.3.
    """

    def __init__(
        self,
        img_size: int,
        train: bool,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flip: bool = True,
        scales: Sequence[float] = MULTI_SCALES,
        area_scale: tuple[float, float] | None = None,
        rand_augment_ops: int = 0,
        rand_augment_magnitude: int = 7,
        random_erasing: float = 0.0,
    ) -> None:
        if not 0 <= rand_augment_magnitude <= 10:
            raise ValueError(
                f"rand_augment_magnitude is on a 0-10 scale, got {rand_augment_magnitude}"
            )
        if not 0.0 <= random_erasing <= 1.0:
            raise ValueError(f"random_erasing is a probability, got {random_erasing}")
        self.img_size = img_size
        self.area_scale = area_scale
        self.rand_augment = (
            v2.RandAugment(rand_augment_ops, magnitude=round(rand_augment_magnitude * 3))
            if rand_augment_ops > 0
            else None
        )
        self.eraser = v2.RandomErasing(random_erasing, value="random") if random_erasing else None
        self.train = train
        self.mean = list(mean)
        self.std = list(std)
        stats = torch.tensor([self.mean, self.std]).view(2, 1, 3, 1, 1)
        self._stats = {torch.uint8: stats * 255.0, torch.float32: stats}  # per input dtype
        self.flip = flip
        self.scales = tuple(scales)

    def __call__(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if not self.train:
            return self.eval_crops(frames, 1)[0]
        video = frames.permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
        if self.rand_augment is not None:  # one draw for the whole clip
            video = self.rand_augment(tv_tensors.Video(video)).as_subclass(torch.Tensor)
        height, width = video.shape[-2:]
        if self.area_scale is not None:
            top, left, crop_h, crop_w = RandomResizedCrop.get_params(
                video, list(self.area_scale), [3 / 4, 4 / 3]
            )
        else:
            top, left, crop_h, crop_w = multi_scale_crop_box(
                height, width, self.scales, 1, generator, output_size=self.img_size
            )
        size = [self.img_size, self.img_size]
        clip = TF.resized_crop(video, top, left, crop_h, crop_w, size, antialias=True)
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            clip = clip.flip(-1)
        clip = self.normalize(clip)
        if self.eraser is not None:  # one box and one noise patch for every frame
            clip = self.eraser(tv_tensors.Video(clip)).as_subclass(torch.Tensor)
        return clip.permute(1, 0, 2, 3).contiguous()  # (3, T, S, S)

    def eval_crops(self, frames: torch.Tensor, num_crops: int) -> list[torch.Tensor]:
        """Evaluation views of one clip: short side resized to ``S``, then ``num_crops``
        ``S x S`` crops evenly spread along the long side (one: centered; three: VideoMAE's
        left / center / right testing).

        Args:
            frames: ``(T, H, W, 3)`` uint8 frames.
            num_crops: Crops per clip.

        Returns:
            ``num_crops`` normalized ``(3, T, S, S)`` clips.
        """
        clip = TF.resize(frames.permute(0, 3, 1, 2), self.img_size, antialias=True)
        height, width = clip.shape[-2:]
        room_y, room_x = height - self.img_size, width - self.img_size
        views = []
        for k in range(num_crops):
            at = 0.5 if num_crops == 1 else k / (num_crops - 1)
            top, left = int(round(at * room_y)), int(round(at * room_x))
            view = clip[..., top : top + self.img_size, left : left + self.img_size]
            views.append(self.normalize(view).permute(1, 0, 2, 3).contiguous())
        return views

    def normalize(self, clip: torch.Tensor) -> torch.Tensor:
        """``(T, 3, S, S)`` uint8 (or float in ``[0, 1]``) -> normalized float32, in one pass."""
        mean, std = self._stats[torch.uint8 if clip.dtype == torch.uint8 else torch.float32]
        return clip.float().sub_(mean).div_(std)
