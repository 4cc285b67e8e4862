"""Data-independent masks from filtered random noise (ColorMAE, Hinojosa et al. 2024).

White noise over the token grid is filtered by one of four linear filters, and the
tokens where the filtered noise is largest stay visible. The filter sets the masks'
spatial character, named after the colors of noise:

* ``red``: low-pass, ``G_s * W``: large visible and masked blobs;
* ``blue``: high-pass, ``W - G_s * W``: visible tokens spread out, few neighbours;
* ``green``: band-pass, ``G_s * W - G_S * W`` (``s < S``): visible clusters at a
  regular spacing (the paper's best setting, with mask ratio 0.75);
* ``purple``: band-stop, ``W - green``.

The official code crops windows out of precomputed pattern files. Here every sample
draws fresh noise on a canvas larger than the grid by the widest kernel's radius and
filters it without padding, which is a crop out of an unbounded noise field: no edge
effects and no files. The kernel widths are options in token units.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .masking import Mask, MaskGenerator, mask_from_scores, num_masked_tokens

__all__ = ["ColorMasking", "NoiseColor", "color_mask", "filtered_noise"]

NoiseColor = Literal["red", "blue", "green", "purple"]
COLORS = ("red", "blue", "green", "purple")


def _check(color: str, sigma: float, sigma_wide: float) -> None:
    if color not in COLORS:
        raise ValueError(f"color must be one of {', '.join(COLORS)}, got {color!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if color in ("green", "purple") and sigma_wide <= sigma:
        raise ValueError(f"{color} noise needs sigma_wide > sigma, got {sigma_wide} <= {sigma}")


def _radius(sigma: float) -> int:
    return math.ceil(3 * sigma)


def _gaussian_blur(noise: Tensor, sigma: float) -> Tensor:
    """``(B, H + 2r, W + 2r) -> (B, H, W)``: separable Gaussian blur without padding."""
    radius = _radius(sigma)
    offsets = torch.arange(-radius, radius + 1, device=noise.device, dtype=noise.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = noise.unsqueeze(1)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def _crop(canvas: Tensor, margin: int) -> Tensor:
    return canvas[:, margin : canvas.shape[1] - margin, margin : canvas.shape[2] - margin]


def filtered_noise(
    batch_size: int,
    grid_size: tuple[int, int],
    color: NoiseColor = "green",
    sigma: float = 1.0,
    sigma_wide: float = 2.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Colored noise over a token grid.

    Args:
        batch_size: ``B``.
        grid_size: ``(H, W)`` token grid.
        color: the filter (module docstring).
        sigma: standard deviation, in tokens, of the Gaussian of ``red`` and ``blue``
            and the narrow one of ``green`` and ``purple``.
        sigma_wide: the wide Gaussian of ``green`` and ``purple`` (> ``sigma``; unused
            by ``red`` and ``blue``).
        device: where the noise is made (the generator's device when one is given).
        generator: optional seeded generator.

    Returns:
        ``(B, H, W)`` float noise.
    """
    _check(color, sigma, sigma_wide)
    if generator is not None:
        device = generator.device
    height, width = grid_size
    margin = _radius(sigma_wide if color in ("green", "purple") else sigma)
    white = torch.randn(
        batch_size, height + 2 * margin, width + 2 * margin, device=device, generator=generator
    )
    low = _crop(_gaussian_blur(white, sigma), margin - _radius(sigma))
    if color == "red":
        return low
    center = _crop(white, margin)
    if color == "blue":
        return center - low
    band = low - _gaussian_blur(white, sigma_wide)
    return band if color == "green" else center - band


def color_mask(
    batch_size: int,
    grid_size: tuple[int, ...],
    mask_ratio: float = 0.75,
    color: NoiseColor = "green",
    sigma: float = 1.0,
    sigma_wide: float = 2.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Mask:
    """ColorMAE masks: the largest filtered-noise values stay visible.

    Every sample masks ``N - int(N * (1 - mask_ratio))`` of its ``N = H * W`` tokens,
    MAE's count. Arguments as :func:`filtered_noise`.
    """
    if len(grid_size) != 2:
        raise ValueError(f"color masks need a 2D grid (H, W), got {tuple(grid_size)}")
    num_masked = num_masked_tokens(math.prod(grid_size), mask_ratio)
    noise = filtered_noise(
        batch_size, tuple(grid_size), color, sigma, sigma_wide, device, generator
    )
    return mask_from_scores(-noise.flatten(1), num_masked)


class ColorMasking(MaskGenerator):
    """ColorMAE's data-independent masking: filtered random noise, thresholded.

    Args:
        mask_ratio: fraction of tokens to mask (ColorMAE: 0.75).
        color: ``red`` (low-pass), ``blue`` (high-pass), ``green`` (band-pass, the
            paper's best) or ``purple`` (band-stop).
        sigma: narrow Gaussian, in tokens.
        sigma_wide: wide Gaussian of the band filters, in tokens.
    """

    def __init__(
        self,
        mask_ratio: float = 0.75,
        color: NoiseColor = "green",
        sigma: float = 1.0,
        sigma_wide: float = 2.0,
    ) -> None:
        num_masked_tokens(1, mask_ratio)
        _check(color, sigma, sigma_wide)
        self.mask_ratio = mask_ratio
        self.color = color
        self.sigma = sigma
        self.sigma_wide = sigma_wide

    def __call__(self, batch_size, grid_size, device=None, generator=None) -> Mask:
        return color_mask(
            batch_size,
            tuple(grid_size),
            self.mask_ratio,
            self.color,
            self.sigma,
            self.sigma_wide,
            device,
            generator,
        )

    def __repr__(self) -> str:
        return (
            f"ColorMasking(mask_ratio={self.mask_ratio}, color={self.color!r}, "
            f"sigma={self.sigma}, sigma_wide={self.sigma_wide})"
        )
