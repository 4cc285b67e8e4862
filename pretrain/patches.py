"""Conversions between images and flattened patches (MAE ordering)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["patchify", "unpatchify", "normalize_patches"]


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Splits images into flattened patches.

    Args:
        images: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``patch_size``.
        patch_size: ``p``.

    Returns:
        ``(B, N, p * p * C)`` with ``N = (H / p) * (W / p)`` in row-major order and
        each patch flattened as ``(p, p, C)``.
    """
    batch, channels, height, width = images.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return patches.reshape(batch, grid_h * grid_w, patch_size * patch_size * channels)


def unpatchify(patches: Tensor, patch_size: int, grid_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, N, p * p * C) -> (B, C, H, W)``."""
    batch = patches.shape[0]
    grid_h, grid_w = grid_size
    channels = patches.shape[-1] // (patch_size * patch_size)
    images = patches.reshape(batch, grid_h, grid_w, patch_size, patch_size, channels)
    images = images.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return images.reshape(batch, channels, grid_h * patch_size, grid_w * patch_size)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch normalization of the MAE ``norm_pix_loss`` target.

    Args:
        patches: ``(..., K)``.

    Returns:
        ``(normalized, mean, std)`` with ``mean``/``std`` of shape ``(..., 1)``; the
        variance is the unbiased one, as in the MAE reference.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + eps).sqrt()
    return (patches - mean) / std, mean, std
