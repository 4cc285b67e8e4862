"""Projector and predictor MLPs of contrastive methods (SimCLR / BYOL style)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLPHead"]


class MLPHead(nn.Sequential):
    """``Linear -> [BatchNorm] -> ReLU`` repeated, then a final ``Linear``.

    CMAE's projector and predictor are 2-layer heads with a 1536-wide hidden layer
    and batch norm on the hidden layer only; ViC-MAE's projector has 3 layers,
    4096 hidden, 128 out.

    Args:
        in_dim: input features.
        hidden_dim: width of the hidden layers.
        out_dim: output features.
        num_layers: number of linear layers (at least 1).
        batch_norm: batch norm after every hidden linear layer.
        last_batch_norm: affine-free batch norm after the last layer too.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        return super().forward(x)
