"""Data helpers for evaluation: timm's fine-tuning augmentation, un-augmented train views."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mimkit.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolder
from mimkit.data.collate import SkipBadSamples, collate_skipping
from mimkit.data.shards import ShardStream

from .features import ConfigError

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
    ``decode_on_device=True`` crops and flips on the device but has no RandAugment or
    random erasing, so it needs ``auto_augment: null`` and ``re_prob: 0`` (a
    :class:`~mimkit.finetune.ConfigError` otherwise, rather than silently dropping them).

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
        if kwargs.get("decode_on_device") and (auto_augment is not None or re_prob > 0):
            raise ConfigError(
                f"FineTuneImageFolder(decode_on_device=True) cannot apply RandAugment "
                f"({auto_augment}) or random erasing ({re_prob}): the device decoder only "
                "crops, resizes and flips. Set decode_on_device: false for MAE's fine-tuning "
                "augmentation, or auto_augment: null and re_prob: 0 to go without it"
            )
        root_path = Path(root).expanduser()
        if val_root is None and (root_path / "train").is_dir() and (root_path / "val").is_dir():
            root_path, val_root = root_path / "train", root_path / "val"
        super().__init__(root=root_path, val_root=val_root, crop_scale=crop_scale, **kwargs)
        self.auto_augment = auto_augment
        self.re_prob = re_prob

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.train_dataset is not None and not self.decode_on_device:
            self.train_dataset.transform = finetune_train_transform(
                self.img_size, self.mean, self.std, self.auto_augment, self.re_prob, self.crop_scale
            )


def _eval_view(datamodule: L.LightningDataModule, train: Dataset, val: Dataset | None) -> Dataset:
    """The training set read like the validation set: its transform, no augmentation.

    A dataset without a ``transform`` attribute is read as it is (the synthetic and
    moving-digit sources render each index deterministically).

    Raises:
        ConfigError: the training samples are augmented in a way this cannot undo (on the
            device, as two views, or by a transform with no validation one to replace it).
    """
    name = type(datamodule).__name__
    if getattr(datamodule, "batch_decoder", None) is not None:
        raise ConfigError(
            f"{name} decodes and augments its training images on the device "
            "(decode_on_device=True), so the training features would be of random crops "
            "and flips; set data.init_args.decode_on_device: false for k-NN and cached "
            "probes"
        )
    if not hasattr(train, "transform"):
        if getattr(train, "views", None) is not None:
            raise ConfigError(
                f"{name}'s training samples are two augmented views; drop data.init_args.views "
                "for k-NN and cached probes"
            )
        return train
    if val is None or not hasattr(val, "transform"):
        raise ConfigError(
            f"{name}'s training split is augmented by its transform and there is no "
            "validation transform to read it with; give the data a validation split"
        )
    view = copy.copy(train)
    view.transform = val.transform
    if hasattr(view, "train"):  # video: centered clips, one per video
        view.train = False
    if isinstance(view, ShardStream):  # one in-order pass: every training sample once
        view.resampled, view.shuffle_buffer, view.samples_per_rank = False, 0, None
    return view


def eval_batches(
    datamodule: L.LightningDataModule, split: str, batch_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """Un-shuffled, un-augmented batches of ``train`` or ``val`` for feature extraction.

    The training split is read with the validation transform (the datasets of
    :mod:`mimkit.data` keep it in a ``transform`` attribute), so k-NN and cached-feature
    probes see the same preprocessing for both splits; a :class:`ConfigError` when that is
    impossible. An unreadable sample is dropped (and counted in the data module's
    ``skipped_samples``), never replaced by another one; a batch may then be empty.
    """
    datamodule.setup("fit")
    val = getattr(datamodule, "val_dataset", None)
    if split == "train":
        dataset = getattr(datamodule, "train_dataset", None)
        if dataset is None:
            raise ConfigError(f"{type(datamodule).__name__} has no training split")
        dataset = _eval_view(datamodule, dataset, val)
    elif split == "val":
        dataset = val
        if dataset is None:
            raise ConfigError(
                f"{type(datamodule).__name__} has no validation split, which k-NN and the "
                "cached probe score; give it one (for ImageFolder: --data.init_args.val_root DIR)"
            )
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not isinstance(dataset, IterableDataset):  # a shard stream drops bad samples itself
        dataset = SkipBadSamples(dataset, drop=True)
    loader = DataLoader(
        dataset,
        batch_size=batch_size or getattr(datamodule, "batch_size", 256),
        shuffle=False,
        num_workers=getattr(datamodule, "num_workers", 0),
        collate_fn=collate_skipping,
    )
    for batch in loader:
        yield datamodule.on_before_batch_transfer(batch, 0)
