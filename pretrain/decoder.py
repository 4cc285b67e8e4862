"""The lightweight MAE decoder: visible latents plus mask tokens to patch predictions.

The same decoder serves images (a 2D grid) and video (a ``(T, H, W)`` grid), and can
process only a subset of the masked tokens (VideoMAE V2 dual masking).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import AttentionBackend, use_backend
from .encoder import gather_tokens, mae_init_weights
from .pos_embed import VideoPosEmbed, sincos_2d, sincos_video

__all__ = ["MAEDecoder"]


class MAEDecoder(nn.Module):
    """Transformer decoder of MAE with fixed sin-cos positions.

    Args:
        grid_size: ``(H, W)`` patch grid of the encoder, or ``(T, H, W)`` for video.
        encoder_dim: encoder width ``D``.
        out_dim: values predicted per patch (``p * p * C`` for pixels).
        num_prefix_tokens: prefix tokens the encoder emits before the patches.
        dim: decoder width.
        depth: decoder blocks.
        num_heads: decoder attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        attn_backend: attention kernel, as for the encoder.
        grad_checkpointing: recompute each block in backward.
        video_pos_embed: space-time sin-cos layout for a 3D grid (see ``sincos_video``).
        embed_bias: a bias in the encoder-to-decoder projection (MAE, MAE-ST: yes;
            VideoMAE's ``encoder_to_decoder``: no).
    """

    def __init__(
        self,
        grid_size: tuple[int, ...],
        encoder_dim: int,
        out_dim: int,
        num_prefix_tokens: int = 1,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        attn_backend: AttentionBackend = "auto",
        grad_checkpointing: bool = False,
        video_pos_embed: VideoPosEmbed = "joint",
        embed_bias: bool = True,
    ) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.video_pos_embed = video_pos_embed
        self.num_prefix_tokens = num_prefix_tokens
        self.grad_checkpointing = grad_checkpointing
        self.embed = nn.Linear(encoder_dim, dim, bias=embed_bias)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", self._position_table(dim), persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *[
                Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm, mlp_layer=Mlp)
                for _ in range(depth)
            ]
        )
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, out_dim)
        use_backend(self.blocks, attn_backend)
        self.apply(mae_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def _position_table(self, dim: int) -> Tensor:
        if len(self.grid_size) == 2:
            table = sincos_2d((self.grid_size[0], self.grid_size[1]), dim)
        elif len(self.grid_size) == 3:
            table = sincos_video(self.grid_size, dim, self.video_pos_embed)
        else:
            raise ValueError(f"MAEDecoder takes a 2D or 3D grid, got {self.grid_size}")
        prefix = torch.zeros(self.num_prefix_tokens, dim)
        return torch.cat([prefix, table], dim=0).unsqueeze(0)  # (1, P + N, dim)

    def forward(
        self, latent: Tensor, ids_restore: Tensor, ids_predict: Tensor | None = None
    ) -> Tensor:
        """Predicts patch values.

        Args:
            latent: ``(B, P + N_keep, D)`` encoder output, prefix tokens first.
            ids_restore: ``(B, N)`` unshuffle indices (see ``Mask.ids_restore``).
            ids_predict: ``(B, K)`` patches to return; ``None`` returns all ``N``.

        Returns:
            ``(B, N, out_dim)``, or ``(B, K, out_dim)`` with ``ids_predict``.
        """
        x = self.embed(latent)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        batch, num_tokens = ids_restore.shape
        masks = self.mask_token.to(x.dtype).expand(batch, num_tokens - visible.shape[1], -1)
        patches = gather_tokens(torch.cat([visible, masks], dim=1), ids_restore)
        x = torch.cat([prefix, patches], dim=1) + self.pos_embed.to(x.dtype)
        x = self.forward_blocks(x)[:, self.num_prefix_tokens :]
        if ids_predict is not None:
            x = gather_tokens(x, ids_predict)
        return self.pred(self.norm(x))

    def forward_blocks(self, x: Tensor) -> Tensor:
        """Runs the decoder blocks: ``(B, L, dim) -> (B, L, dim)``."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_subset(self, latent: Tensor, ids_keep: Tensor, ids_query: Tensor) -> Tensor:
        """Predicts the patches at ``ids_query``; the other masked positions are dropped.

        The decoder sees the prefix tokens, the visible latents at their positions and one
        mask token per queried position, nothing else (VideoMAE V2 decoder masking; a
        queried position may also hold a visible latent, as in V2's code).

        Args:
            latent: ``(B, P + N_keep, D)`` encoder output, prefix tokens first.
            ids_keep: ``(B, N_keep)`` positions of the visible latents.
            ids_query: ``(B, K)`` positions to reconstruct.

        Returns:
            ``(B, K, out_dim)`` predictions for ``ids_query``, in its order.
        """
        x = self.embed(latent)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        pos = self.pos_embed.to(x.dtype).expand(x.shape[0], -1, -1)
        prefix = prefix + pos[:, : self.num_prefix_tokens]
        patch_pos = pos[:, self.num_prefix_tokens :]
        visible = visible + gather_tokens(patch_pos, ids_keep)
        queries = self.mask_token.to(x.dtype) + gather_tokens(patch_pos, ids_query)
        x = self.forward_blocks(torch.cat([prefix, visible, queries], dim=1))
        return self.pred(self.norm(x[:, -ids_query.shape[1] :]))
