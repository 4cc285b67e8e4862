"""Data helpers for evaluation: timm's fine-tuning augmentation, un-augmented train views."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset

from mimkit.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder
from mimkit.data.collate import SkipBadSamples, collate_skipping

__all__ = ["FineTuneImageFolder", "eval_batches", "finetune_train_transform"]


def finetune_train_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    scale: tuple[float, float] = (0.08, 1.0),
) -> Any:
    """MAE's fine-tuning augmentation through timm's ``create_transform``.

    Random resized crop (bicubic), horizontal flip, RandAugment (magnitude 9, std 0.5),
    normalization and random erasing (probability 0.25, per-pixel noise, one box), no
    color jitter: He et al. 2022, Appendix A.2, Table 9.
    """
    return create_transform(
        input_size=img_size,
        is_training=True,
        scale=scale,
        color_jitter=None,
        auto_augment=auto_augment,
        interpolation="bicubic",
        re_prob=re_prob,
        re_mode="pixel",
        re_count=1,
        mean=tuple(mean),
        std=tuple(std),
    )


class FineTuneImageFolder(ImageFolder):
    """:class:`~mimkit.data.ImageFolder` with MAE's fine-tuning augmentation on the train split.

    ``root`` may also be an ImageNet-style folder holding ``train/`` and ``val/`` (used when
    ``val_root`` is not given). Evaluation images get the usual resize + center crop.

    Args:
        root: training source, or a folder with ``train/`` and ``val/``.
        val_root: validation source.
        auto_augment: timm auto-augment policy (``None`` to disable).
        re_prob: random erasing probability.
        **kwargs: the other :class:`~mimkit.data.ImageFolder` arguments.
    """

    def __init__(
        self,
        root: str | Path,
        val_root: str | Path | None = None,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        **kwargs: Any,
    ) -> None:
        root_path = Path(root).expanduser()
        if val_root is None and (root_path / "train").is_dir() and (root_path / "val").is_dir():
            root_path, val_root = root_path / "train", root_path / "val"
        super().__init__(root=root_path, val_root=val_root, crop_scale=crop_scale, **kwargs)
        self.auto_augment = auto_augment
        self.re_prob = re_prob

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.train_dataset is not None and hasattr(self.train_dataset, "transform"):
            self.train_dataset.transform = finetune_train_transform(
                self.img_size, self.mean, self.std, self.auto_augment, self.re_prob, self.crop_scale
            )


def _eval_view(train: Dataset, val: Dataset | None) -> Dataset:
    """The training set with the validation transform (no augmentation), when possible."""
    if val is not None and hasattr(train, "transform") and hasattr(val, "transform"):
        view = copy.copy(train)
        view.transform = val.transform
        if hasattr(view, "train"):  # video: centered clips, one per video
            view.train = False
        return view
    return train


def eval_batches(
    datamodule: L.LightningDataModule, split: str, batch_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """Un-shuffled, un-augmented batches of ``train`` or ``val`` for feature extraction.

    The training split is read with the validation transform (the datasets of
    :mod:`mimkit.data` keep it in a ``transform`` attribute), so k-NN and cached-feature
    probes see the same preprocessing for both splits.
    """
    datamodule.setup("fit")
    val = getattr(datamodule, "val_dataset", None)
    if split == "train":
        dataset = getattr(datamodule, "train_dataset", None)
        if dataset is None:
            raise ValueError(f"{type(datamodule).__name__} has no training split")
        dataset = _eval_view(dataset, val)
    elif split == "val":
        dataset = val
        if dataset is None:
            raise ValueError(f"{type(datamodule).__name__} has no validation split")
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    loader = DataLoader(
        SkipBadSamples(dataset),
        batch_size=batch_size or getattr(datamodule, "batch_size", 256),
        shuffle=False,
        num_workers=getattr(datamodule, "num_workers", 0),
        collate_fn=collate_skipping,
    )
    for batch in loader:
        yield datamodule.on_before_batch_transfer(batch, 0)
