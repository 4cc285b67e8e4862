"""Image transforms shared by the DataModules.

Every transform here maps a PIL image to a normalized float tensor of shape ``(C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Standard ImageNet evaluation crop ratio: resize to ``img_size / 0.875`` then center crop.
EVAL_CROP_RATIO = 0.875


def eval_crop_ratio(img_size: int) -> float:
    """MAE's (``util/datasets.py``): 224/256 up to 224 px; above, resize straight to the size."""
    return EVAL_CROP_RATIO if img_size <= 224 else 1.0


def mae_train_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.2, 1.0),
) -> T.Compose:
    """MAE pretraining augmentation: random resized crop, horizontal flip, normalize.

    Args:
        img_size: Output side length ``S``.
        mean: Per-channel mean used by ``Normalize``.
        std: Per-channel std used by ``Normalize``.
        scale: Area fraction range of the random resized crop.

    Returns:
        A transform mapping a PIL image to a float tensor of shape ``(C, S, S)``.
    """
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, scale=scale, interpolation=InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Evaluation transform: resize the short side to ``img_size / 0.875`` (``img_size`` above
    224 px, as MAE), center crop, normalize.

    Args:
        img_size: Output side length ``S``.
        mean: Per-channel mean used by ``Normalize``.
        std: Per-channel std used by ``Normalize``.

    Returns:
        A transform mapping a PIL image to a float tensor of shape ``(C, S, S)``.
    """
    return T.Compose(
        [
            T.Resize(
                int(img_size / eval_crop_ratio(img_size)), interpolation=InterpolationMode.BICUBIC
            ),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
