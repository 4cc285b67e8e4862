"""JPEG decoding and MAE's crop / flip / normalize on the training device.

With ``ImageFolder(decode_on_device=True)`` or ``Shards(decode_on_device=True)`` the
DataLoader workers only read each image's bytes and draw its augmentation (a
random-resized-crop box from the image header and a flip bit, from the same RNG calls as
torchvision's ``RandomResizedCrop`` and ``RandomHorizontalFlip``). The batch is then
decoded where the model runs: ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG,
batched, on CUDA), each image cropped and resized (bicubic, antialiased) on the device,
flipped, and normalized as one batch in float. The CPU workers do a small fraction of their usual work, so fewer of them keep a
GPU fed. Non-JPEG files are decoded by the worker and only cropped on the device.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from .collate import FileSamples, collate_skipping

__all__ = ["DeviceDecodeCrop", "EncodedImageDataset", "collate_encoded", "encode_image"]

log = logging.getLogger(__name__)

#: Keys of an encoded sample that stay lists in a batch (one entry per image).
ENCODED = "encoded"
#: The JPEG start-of-image marker.
JPEG_MAGIC = b"\xff\xd8"


class EncodedImageDataset(FileSamples):
    """Image file bytes plus their crop box and flip bit, for :class:`DeviceDecodeCrop`.

    Args:
        samples: ``(path, label)`` pairs; a ``None`` label means no ``"label"`` key.
        scale: Area fraction range of the random resized crop.
        ratio: Aspect ratio range of the random resized crop.

    Returns (per index): ``{"encoded": uint8 tensor, "crop": (4,) long (top, left, height,
    width), "flip": bool tensor, "label": int}``; ``"encoded"`` holds the JPEG bytes, or for
    other formats the decoded ``(3, H, W)`` uint8 image. ``None`` for an unreadable file.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int | None]],
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        super().__init__(samples)
        self.scale = list(scale)
        self.ratio = list(ratio)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        path, label = self.samples[index]
        try:
            with open(path, "rb") as handle:
                sample = encode_image(handle.read(), self.scale, self.ratio)
        except Exception as error:  # truncated, corrupt, missing, unsupported: skip and count
            log.debug("Skipping unreadable image %s: %r", path, error)
            return None
        if label is not None:
            sample["label"] = label
        return sample


def encode_image(
    data: bytes, scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3)
) -> dict[str, Any]:
    """One image file's bytes to ``{"encoded", "crop", "flip"}`` for :class:`DeviceDecodeCrop`.

    Reads only the header of a JPEG; other formats (and CMYK JPEGs, which nvJPEG does not
    take) are decoded here. The crop box and flip bit come from torch's RNG, with the same
    calls as torchvision's ``RandomResizedCrop`` and ``RandomHorizontalFlip``.

    Args:
        data: the file's bytes.
        scale: area fraction range of the random resized crop.
        ratio: aspect ratio range of the random resized crop.

    Raises:
        Exception: whatever PIL raises for bytes that are no readable image.
    """
    with Image.open(io.BytesIO(data)) as image:
        top, left, height, width = RandomResizedCrop.get_params(image, list(scale), list(ratio))
        flip = bool(torch.rand(1) < 0.5)
        if data[:2] == JPEG_MAGIC and image.format == "JPEG" and image.mode != "CMYK":
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            encoded = TF.pil_to_tensor(image.convert("RGB"))
    return {
        ENCODED: encoded,
        "crop": torch.tensor([top, left, height, width]),
        "flip": torch.tensor(flip),
    }


def collate_encoded(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """:func:`~mimkit.data.collate.collate_skipping` with ``"encoded"`` kept as a list."""
    encoded: list[torch.Tensor] = []
    for sample in samples:
        if sample is not None and ENCODED in sample:
            encoded.append(sample.pop(ENCODED))
            sample["pixels"] = torch.empty(0)  # marks the sample as served
    batch = collate_skipping(samples)
    batch.pop("pixels")
    batch[ENCODED] = encoded
    return batch


class DeviceDecodeCrop:
    """Decodes an encoded batch on ``device``, crops, resizes, flips and normalizes it.

    Args:
        img_size: Output side ``S``.
        mean: Per-channel mean (of ``[0, 1]`` pixels).
        std: Per-channel std.
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.img_size = img_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255

    def decode(self, encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """JPEG bytes (batched ``decode_jpeg`` on ``device``) or decoded images to ``(3, H, W)`` uint8."""
        jpeg = [i for i, data in enumerate(encoded) if data.ndim == 1]
        images: list[torch.Tensor] = [data.to(device) for data in encoded]
        if jpeg:
            target = device if device.type == "cuda" else "cpu"
            decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=target)
            for i, image in zip(jpeg, decoded, strict=True):
                images[i] = image.to(device)
        return images

    def __call__(self, batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
        """``{"encoded", "crop", "flip", ...}`` to ``{"pixels": (B, 3, S, S) float, ...}`` on ``device``."""
        device = torch.device(device)
        images = self.decode(batch.pop(ENCODED), device)
        boxes = batch.pop("crop").tolist()
        flips = batch.pop("flip").tolist()
        size = [self.img_size, self.img_size]
        crops = []
        for image, (top, left, height, width), flip in zip(images, boxes, flips, strict=True):
            crop = TF.resized_crop(
                image, top, left, height, width, size, TF.InterpolationMode.BICUBIC, antialias=True
            )
            crops.append(crop.flip(-1) if flip else crop)
        pixels = torch.stack(crops).float()
        batch["pixels"] = (pixels - self.mean.to(device)) / self.std.to(device)
        if "label" in batch:
            batch["label"] = batch["label"].to(device)
        return batch
