"""Synthetic JPEGs for the data benchmarks: smooth random images about ImageNet's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, size: int) -> None:
    """``count`` smooth random RGB JPEGs, ``size`` high and 4:3, in ``folder``.

    Upsampled noise compresses like photos, unlike raw noise.
    """
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size * 4 // 3, size), Image.BICUBIC)
        image.save(folder / f"{i:06d}.jpg", quality=90)
