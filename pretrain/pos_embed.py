"""Fixed sin-cos position embeddings (MAE)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sincos_1d", "sincos_2d"]


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
