"""Images from a class-folder tree, a flat folder, or a text list of paths."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader

from .base import MimDataModule
from .collate import FileSamples
from .device_decode import DeviceDecodeCrop, EncodedImageDataset, collate_encoded
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, mae_train_transform
from .views import ViewPair

log = logging.getLogger(__name__)

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_EXPECTED = (
    "expected a folder of class subfolders, a flat folder of images "
    f"({', '.join(IMG_EXTENSIONS)}), or a text file listing one image path per line "
    "(optionally followed by whitespace or a comma and an integer label)"
)
_LIST_LINE = re.compile(r"^(?P<path>.+?)(?:[\s,]+(?P<label>-?\d+))?$")

Samples = list[tuple[str, int | None]]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _images_under(folder: Path, recursive: bool) -> list[str]:
    """Sorted image paths in ``folder`` (hidden files and folders excluded)."""
    if not recursive:
        return sorted(str(p) for p in folder.iterdir() if p.is_file() and _is_image(p.name))
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return found


def class_names(root: Path) -> list[str] | None:
    """Sorted non-hidden subfolder names of a folder root; ``None`` for a list file or flat folder."""
    if not root.is_dir():
        return None
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return names or None


def _read_list(list_file: Path) -> Samples:
    samples: Samples = []
    for number, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LIST_LINE.match(line)
        assert match is not None  # the pattern matches any non-empty line
        path = Path(match["path"].strip()).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path
        label = int(match["label"]) if match["label"] is not None else None
        if label is not None and label < 0:
            raise ValueError(f"{list_file}:{number}: negative label {label}")
        samples.append((str(path), label))
    if not samples:
        raise ValueError(f"Image list {list_file} lists no images; {_EXPECTED}.")
    if len({label is None for _, label in samples}) > 1:
        raise ValueError(f"Image list {list_file} mixes labeled and unlabeled lines.")
    return samples


def require_image_source(root: str | Path) -> Path:
    """``root`` with ``~`` expanded; ``FileNotFoundError`` saying what is expected if missing."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"Image source {root} does not exist; {_EXPECTED}.")
    return root


def scan_images(root: str | Path, classes: Sequence[str] | None = None) -> Samples:
    """List the ``(path, label)`` samples of an image source.

    Args:
        root: A folder of class subfolders (labels = index of the subfolder in ``classes``),
            a flat folder of images (labels ``None``), or a text file listing images.
        classes: Class names defining label indices for a class-folder root; defaults to the
            root's own sorted subfolders (pass the training root's to align a validation root).

    Returns:
        Samples in a deterministic order.

    Raises:
        FileNotFoundError: If ``root`` does not exist.
        ValueError: If it holds no images, or a folder's classes are not in ``classes``.
    """
    root = require_image_source(root)
    if root.is_file():
        return _read_list(root)
    subfolders = class_names(root)
    if subfolders is None:
        samples: Samples = [(p, None) for p in _images_under(root, recursive=False)]
    else:
        if _images_under(root, recursive=False):
            raise ValueError(
                f"Image folder {root} has both image files and subfolders; {_EXPECTED}."
            )
        class_to_idx = {name: i for i, name in enumerate(classes or subfolders)}
        unknown = [name for name in subfolders if name not in class_to_idx]
        if unknown:
            raise ValueError(
                f"Image folder {root} has classes {unknown} not in {list(classes or [])}."
            )
        samples = [
            (path, class_to_idx[name])
            for name in subfolders
            for path in _images_under(root / name, recursive=True)
        ]
    if not samples:
        raise ValueError(f"Image folder {root} contains no images; {_EXPECTED}.")
    return samples


class ImageFileDataset(FileSamples):
    """Decodes image files with PIL; an unreadable file gives ``None`` instead of an exception.

    Args:
        samples: ``(path, label)`` pairs; a ``None`` label means no ``"label"`` key.
        transform: Maps an RGB PIL image to a float tensor ``(3, S, S)``.
    """

    def __init__(self, samples: Samples, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        super().__init__(samples)
        self.transform = transform

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                pixels = self.transform(image.convert("RGB"))
        except Exception as error:  # truncated, corrupt, missing, unsupported: skip and count
            log.debug("Skipping unreadable image %s: %r", path, error)
            return None
        sample: dict[str, Any] = {"pixels": pixels}
        if isinstance(pixels, list):  # a view pair (see mimkit.data.views)
            sample = {"pixels": pixels[0], "views": pixels}
        if label is not None:
            sample["label"] = label
        return sample


class ImageFolder(MimDataModule):
    """Images from disk for pretraining (MAE augmentation) and evaluation (center crop).

    ``root`` / ``val_root`` each take one of three forms:

    * a folder of class subfolders (labels from sorted subfolder names, like torchvision's
      ``ImageFolder``; images found recursively; ``val_root`` classes are indexed with the
      ``root``'s class list);
    * a flat folder of images (unlabeled: batches have no ``"label"``);
    * a text file with one image path per line, optionally ``path<whitespace or comma>label``;
      relative paths are resolved against the list file's folder; ``#`` starts a comment.

    Extensions: jpg jpeg png bmp webp tif tiff (any case). Sources are scanned in ``setup``
    (not ``__init__``), which raises :class:`FileNotFoundError` / :class:`ValueError` naming the
    path for a missing root, a root without images or an empty list. Files that fail to decode
    are skipped, counted and reported (see :class:`~mimkit.data.base.MimDataModule`).

    Batches: ``{"pixels": (B, 3, img_size, img_size) float, "label": (B,) long (if labeled)}``.

    Args:
        root: Training source.
        val_root: Validation source; ``None`` for no validation.
        img_size: Output side length.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        crop_scale: Area fraction range of the training random resized crop.
        mean: Normalization mean per channel.
        std: Normalization std per channel.
        num_classes: Number of classes; inferred in ``setup`` when ``None`` (labeled sources),
            checked against the labels otherwise. Set it when a model needs it at construction.
        pin_memory: Pin host memory when CUDA is available.
        views: Two-view augmentation replacing the MAE crop for training (contrastive
            methods); batches then also carry ``"views"``.
        decode_on_device: Training images are decoded, cropped, resized, flipped and
            normalized on the model's device (nvJPEG on CUDA) instead of in the workers,
            which only read bytes (:mod:`mimkit.data.device_decode`). Same augmentation
            distribution; validation is unchanged. Not with ``views``.
    """

    def __init__(
        self,
        root: str | Path,
        val_root: str | Path | None = None,
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 8,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_classes: int | None = None,
        pin_memory: bool = True,
        views: ViewPair | None = None,
        decode_on_device: bool = False,
    ) -> None:
        if decode_on_device and views is not None:
            raise ValueError("decode_on_device does not apply two-view augmentation; drop one")
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
        self.root = Path(root)
        self.val_root = Path(val_root) if val_root is not None else None
        self.crop_scale = crop_scale
        self.decode_on_device = decode_on_device
        if decode_on_device:
            self.batch_decoder = DeviceDecodeCrop(img_size, self.mean, self.std)

    def _check_labels(self, source: Path, samples: Samples, classes: list[str] | None) -> None:
        labels = [label for _, label in samples if label is not None]
        if not labels:
            return
        found = len(classes) if classes is not None else max(labels) + 1
        if self.num_classes is None:
            self.num_classes = found
        elif max(labels) >= self.num_classes or (classes is not None and found != self.num_classes):
            raise ValueError(
                f"{source} has {found} classes (labels up to {max(labels)}) but "
                f"num_classes={self.num_classes}."
            )

    def preflight(self, stage: str | None = None, world_size: int = 1) -> None:
        if stage in (None, "fit"):
            require_image_source(self.root)
        if self.val_root is not None:
            require_image_source(self.val_root)

    def setup(self, stage: str | None = None) -> None:
        """Scan the sources: the training one for ``fit`` (or no stage), the validation one always.

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ``"test"``, ``"predict"``).
        """
        classes = class_names(self.root) if self.root.is_dir() else None
        if stage in (None, "fit") and self.train_dataset is None:
            samples = scan_images(self.root)
            self._check_labels(self.root, samples, classes)
            if self.decode_on_device:
                self.train_dataset = EncodedImageDataset(samples, self.crop_scale)
            else:
                transform = mae_train_transform(self.img_size, self.mean, self.std, self.crop_scale)
                if self.views is not None:
                    transform = self.views.build(self.img_size, self.mean, self.std)
                self.train_dataset = ImageFileDataset(samples, transform)
        if self.val_root is not None and self.val_dataset is None:
            samples = scan_images(self.val_root, classes)
            self._check_labels(self.val_root, samples, classes)
            self.val_dataset = ImageFileDataset(
                samples, eval_transform(self.img_size, self.mean, self.std)
            )

    def train_dataloader(self) -> DataLoader:
        """Training batches; encoded ones (``decode_on_device``) collate their bytes as lists."""
        loader = super().train_dataloader()
        if self.decode_on_device:
            loader.collate_fn = collate_encoded
        return loader
