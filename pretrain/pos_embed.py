"""Fixed sin-cos position embeddings: 2D for images (MAE), space-time for video."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "VideoPosEmbed",
    "sincos_1d",
    "sincos_2d",
    "sincos_3d",
    "sincos_separable",
    "sincos_video",
    "sincos_videomae",
]


def sincos_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sin-cos embedding of scalar positions.

    Args:
        positions: ``(M,)`` positions.
        dim: even embedding width.

    Returns:
        ``(M, dim)``: ``[sin(pos * w_i), cos(pos * w_i)]`` with ``w_i = T^(-2i/dim)``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / temperature**omega
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid_size: tuple[int, int], dim: int) -> Tensor:
    """2D sin-cos embedding, row-major over the ``(H, W)`` grid.

    The first half of the channels encodes the column, the second half the row,
    which is the layout of the MAE reference.

    Returns:
        ``(H * W, dim)``.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding width must be divisible by 4, got {dim}")
    height, width = grid_size
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat(
        [sincos_1d(cols.flatten(), dim // 2), sincos_1d(rows.flatten(), dim // 2)], dim=1
    )


VideoPosEmbed = Literal["joint", "separable", "videomae"]


def sincos_3d(grid_size: tuple[int, int, int], dim: int) -> Tensor:
    """Joint space-time sin-cos embedding, row-major over the ``(T, H, W)`` grid.

    The channels are split in three: the first ``d_s = 2 * (3 * dim // 16)`` encode
    the column, the next ``d_s`` the row and the remaining ``dim - 2 * d_s`` (about a
    quarter) the time index, each with :func:`sincos_1d`.

    Returns:
        ``(T * H * W, dim)``.
    """
    spatial = 2 * (3 * dim // 16)
    temporal = dim - 2 * spatial
    if spatial == 0 or temporal % 2:
        raise ValueError(f"3D sin-cos embedding width must be a multiple of 2 and >= 16, got {dim}")
    frames, height, width = grid_size
    t, h, w = torch.meshgrid(
        torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij"
    )
    return torch.cat(
        [
            sincos_1d(w.flatten(), spatial),
            sincos_1d(h.flatten(), spatial),
            sincos_1d(t.flatten(), temporal),
        ],
        dim=1,
    )


def sincos_separable(grid_size: tuple[int, int, int], dim: int) -> Tensor:
    """Separable space + time sin-cos embedding (the MAE-ST ``sep_pos_embed`` layout).

    Token ``(t, h, w)`` gets ``sincos_2d[h, w] + sincos_1d(t)``, both ``dim`` wide: a
    spatial table shared by all frames plus a temporal table shared by all positions.

    Returns:
        ``(T * H * W, dim)``.
    """
    frames, height, width = grid_size
    spatial = sincos_2d((height, width), dim)  # (H * W, dim)
    temporal = sincos_1d(torch.arange(frames), dim)  # (T, dim)
    return (temporal[:, None, :] + spatial[None, :, :]).reshape(frames * height * width, dim)


def sincos_videomae(num_tokens: int, dim: int) -> Tensor:
    """VideoMAE's fixed table: a 1D sinusoid over the flattened token index.

    Channel ``2i`` holds ``sin(n / 10000^(2i / dim))`` and channel ``2i + 1`` the cosine
    (interleaved, as in the official VideoMAE code), ``n`` the index in ``(T, H, W)``
    row-major order.

    Returns:
        ``(num_tokens, dim)``.
    """
    table = sincos_1d(torch.arange(num_tokens), dim)  # [sin..., cos...]
    half = dim // 2
    return torch.stack([table[:, :half], table[:, half:]], dim=2).reshape(num_tokens, dim)


def sincos_video(grid_size: tuple[int, int, int], dim: int, kind: VideoPosEmbed) -> Tensor:
    """Space-time sin-cos table of one of the three layouts: ``(T * H * W, dim)``."""
    if kind == "joint":
        return sincos_3d(grid_size, dim)
    if kind == "separable":
        return sincos_separable(grid_size, dim)
    if kind == "videomae":
        return sincos_videomae(math.prod(grid_size), dim)
    raise ValueError(f"video position embedding must be joint, separable or videomae, got {kind!r}")
