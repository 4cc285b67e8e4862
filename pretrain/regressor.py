"""CAE's latent contextual regressor: cross-attention from mask queries to visible latents."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from torch import Tensor, nn

from .encoder import mae_init_weights

__all__ = ["CrossAttention", "RegressorBlock", "LatentRegressor", "linear_drop_path_rates"]


def linear_drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block stochastic depth ``linspace(0, rate, depth)``, as BEiT and CAE."""
    return [rate * i / max(1, depth - 1) for i in range(depth)]


class CrossAttention(nn.Module):
    """Multi-head attention of queries over a separate key/value sequence.

    Keys have no bias (a key bias shifts every logit of a query equally), as in
    BEiT and CAE.

    Args:
        dim: width of queries, keys and values.
        num_heads: attention heads (``dim`` divisible by it).
        qkv_bias: biases on the query and value projections.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """``(B, M, D)`` queries over ``(B, L, D)`` keys and values -> ``(B, M, D)``."""
        out = F.scaled_dot_product_attention(
            self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value))
        )  # (B, H, M, D / H)
        return self.proj(out.transpose(1, 2).flatten(2))


class RegressorBlock(nn.Module):
    """One regressor layer, arranged as in the official CAE code.

    ``x = x + ls1 * attn(q = LN(x + pos_q), k = LN(kv + pos_kv), v = LN(kv))``, then
    ``x = LN(x)``, then ``x = x + ls2 * mlp(x)``. Positions enter queries and keys
    only, never the residual stream.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        init_values: layer-scale initial value (CAE: 0.1); ``None`` disables it.
        drop_path: stochastic depth rate of this block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        init_values: float | None = 0.1,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm_q, self.norm_k, self.norm_v, self.norm_mid = (
            norm(dim),
            norm(dim),
            norm(dim),
            norm(dim),
        )
        self.attn = CrossAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, kv: Tensor, pos_q: Tensor, pos_kv: Tensor) -> Tensor:
        """``x``: ``(B, M, D)`` queries; ``kv``: ``(B, L, D)``; positions alike."""
        attended = self.attn(self.norm_q(x + pos_q), self.norm_k(kv + pos_kv), self.norm_v(kv))
        x = self.norm_mid(x + self.drop_path(self.ls1(attended)))
        return x + self.drop_path(self.ls2(self.mlp(x)))


class LatentRegressor(nn.Module):
    """Predicts the latents of masked patches from the visible ones (CAE).

    Each block's queries are the current masked-patch estimates (initially one
    shared mask token) with their positions; keys and values are the visible
    latents concatenated with those queries. The visible latents are never updated
    here, so the encoder alone is responsible for representing the visible content.

    Args:
        dim: latent width (the encoder's).
        depth: regressor blocks (CAE: 4).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        init_values: layer-scale initial value.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        init_values: float | None = 0.1,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            RegressorBlock(dim, num_heads, mlp_ratio, init_values, rate)
            for rate in linear_drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(mae_init_weights)

    def forward(
        self, queries: Tensor, visible: Tensor, pos_q: Tensor, pos_visible: Tensor
    ) -> Tensor:
        """Regresses masked latents.

        Args:
            queries: ``(B, M, D)`` mask tokens.
            visible: ``(B, N_keep, D)`` encoder latents of the visible patches.
            pos_q: ``(B, M, D)`` positions of the masked patches.
            pos_visible: ``(B, N_keep, D)`` positions of the visible patches.

        Returns:
            ``(B, M, D)`` predicted latents, normalized.
        """
        pos_kv = torch.cat([pos_visible, pos_q], dim=1)
        x = queries
        for block in self.blocks:
            x = block(x, torch.cat([visible, x], dim=1), pos_q, pos_kv)
        return self.norm(x)
