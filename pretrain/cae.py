"""Context autoencoder (Chen et al., "Context Autoencoder for Self-Supervised Representation Learning")."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any, Literal

import torch
from jsonargparse import lazy_instance
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .attention import AttentionBackend, use_backend
from .base import PretrainModule
from .encoder import ViTEncoder, gather_tokens, mae_init_weights
from .masking import BlockMasking, Mask, MaskGenerator
from .patches import normalize_patches, patchify, unpatchify
from .pos_embed import sincos_2d
from .regressor import LatentRegressor, linear_drop_path_rates
from .targets import PixelTarget, ReconstructionTarget

__all__ = ["CAE", "CAEDecoder"]


class CAEDecoder(nn.Module):
    """Self-attention blocks over the predicted masked latents only, then a linear head.

    Args:
        dim: latent width.
        out_dim: values predicted per masked patch (pixels or token logits).
        depth: blocks (CAE: 4).
        num_heads: attention heads.
        init_values: layer-scale initial value (CAE: 0.1).
        attn_backend: attention kernel, as for the encoder.
        drop_path_rate: stochastic depth, linearly from 0 at the first block to this rate
            at the last (CAE: the encoder's rate, 0.1).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int = 4,
        num_heads: int = 12,
        init_values: float | None = 0.1,
        attn_backend: AttentionBackend = "auto",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *[
                Block(
                    dim,
                    num_heads,
                    qkv_bias=True,
                    init_values=init_values,
                    drop_path=rate,
                    norm_layer=norm,
                    mlp_layer=Mlp,
                )
                for rate in linear_drop_path_rates(drop_path_rate, depth)
            ]
        )
        self.norm = norm(dim)
        self.head = nn.Linear(dim, out_dim)
        use_backend(self.blocks, attn_backend)
        self.apply(mae_init_weights)

    def forward(self, latent: Tensor, pos: Tensor) -> Tensor:
        """``(B, M, D)`` latents and positions -> ``(B, M, out_dim)``."""
        return self.head(self.norm(self.blocks(latent + pos)))


class CAE(PretrainModule):
    """CAE: encoder on visible patches, a latent regressor, alignment, and a decoder.

    1. ``encode``: the encoder sees only the visible patches (block-wise mask, ~50%).
    2. ``regress``: cross-attention blocks turn one mask token per masked position
       into predicted latents, attending to the visible latents and themselves.
    3. ``align_target``: the encoder's own latents of the masked patches (the encoder
       run on the masked patches only, without gradient), either the online encoder
       itself (the paper) or an EMA copy (``alignment_encoder="ema"``).
    4. ``decode``: the predicted latents alone (no visible latents) are decoded into
       the reconstruction target of the masked patches.

    ``loss = reconstruction + align_weight * MSE(predicted latents, target latents)``.

    Args:
        encoder: the shared ViT encoder.
        masking: mask generator (block-wise, 50% by default).
        target: what the decoder reconstructs (normalized pixels by default, or a
            discrete tokenizer's codes as in the paper).
        regressor_depth: regressor blocks (4).
        decoder_depth: decoder blocks (4).
        num_heads: heads of regressor and decoder; ``None`` takes the encoder's.
        layer_scale: layer-scale initial value of regressor and decoder (0.1).
        regressor_drop_path_rate: stochastic depth of the regressor blocks, linearly from 0
            to this rate over its depth (official CAE: the encoder's ``--drop_path``, 0.1).
        decoder_drop_path_rate: the same for the decoder blocks (official: also 0.1).
        align_weight: weight of the alignment loss (the paper's lambda = 2).
        alignment_encoder: ``online`` (the same encoder under ``no_grad``) or ``ema``
            (a momentum copy updated with the base's ``ema_momentum`` schedule).
        **kwargs: optimizer, schedule and EMA settings of :class:`PretrainModule`.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        masking: MaskGenerator = lazy_instance(BlockMasking, mask_ratio=0.5),  # noqa: B008
        target: ReconstructionTarget = lazy_instance(PixelTarget, norm_pix=True),  # noqa: B008
        regressor_depth: int = 4,
        decoder_depth: int = 4,
        num_heads: int | None = None,
        layer_scale: float | None = 0.1,
        regressor_drop_path_rate: float = 0.0,
        decoder_drop_path_rate: float = 0.0,
        align_weight: float = 2.0,
        alignment_encoder: Literal["online", "ema"] = "online",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.masking = masking
        self.target = target
        self.align_weight = align_weight
        self.alignment_mode = alignment_encoder
        self.patch_size = encoder.patch_size
        dim = encoder.embed_dim
        heads = num_heads or encoder.blocks[0].attn.num_heads
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("pos_embed", sincos_2d(encoder.grid_size, dim)[None], persistent=False)
        self.regressor = LatentRegressor(
            dim,
            regressor_depth,
            heads,
            init_values=layer_scale,
            drop_path_rate=regressor_drop_path_rate,
        )
        self.decoder = CAEDecoder(
            dim,
            target.out_dim(encoder.patch_size, encoder.in_chans),
            decoder_depth,
            heads,
            init_values=layer_scale,
            attn_backend=encoder.attn_backend,
            drop_path_rate=decoder_drop_path_rate,
        )
        self.alignment_encoder: ViTEncoder | None = None
        if alignment_encoder == "ema":
            self.alignment_encoder = copy.deepcopy(encoder).requires_grad_(False)
        elif alignment_encoder != "online":
            raise ValueError(
                f"alignment_encoder must be 'online' or 'ema', got {alignment_encoder!r}"
            )

    # ----- the model, one step at a time -------------------------------------------

    def mask(self, batch_size: int, generator: torch.Generator | None = None) -> Mask:
        """Draws a mask over the encoder's patch grid, on the module's device."""
        return self.masking(batch_size, self.encoder.grid_size, self.device, generator)

    def positions(self, ids: Tensor) -> Tensor:
        """``(B, K)`` patch indices -> ``(B, K, D)`` sin-cos positions."""
        return gather_tokens(self.pos_embed.expand(ids.shape[0], -1, -1), ids)

    def encode(self, pixels: Tensor, mask: Mask) -> Tensor:
        """``(B, C, H, W) -> (B, N_keep, D)`` latents of the visible patches (prefix dropped)."""
        return self.encoder(pixels, mask.ids_keep)[:, self.encoder.num_prefix_tokens :]

    def regress(self, visible: Tensor, mask: Mask) -> Tensor:
        """``(B, N_keep, D) -> (B, N_mask, D)`` predicted latents of the masked patches."""
        queries = self.mask_token.to(visible.dtype).expand(visible.shape[0], mask.num_masked, -1)
        pos_q = self.positions(mask.ids_masked).to(visible.dtype)
        return self.regressor(
            queries, visible, pos_q, self.positions(mask.ids_keep).to(visible.dtype)
        )

    @torch.no_grad()
    def align_target(self, pixels: Tensor, mask: Mask) -> Tensor:
        """``(B, N_mask, D)``: the (alignment) encoder run on the masked patches only."""
        encoder = self.alignment_encoder if self.alignment_encoder is not None else self.encoder
        return encoder(pixels, mask.ids_masked)[:, encoder.num_prefix_tokens :]

    def decode(self, predicted: Tensor, mask: Mask) -> Tensor:
        """``(B, N_mask, D) -> (B, N_mask, out_dim)`` from the predicted latents alone."""
        return self.decoder(predicted, self.positions(mask.ids_masked).to(predicted.dtype))

    def masked_target(self, pixels: Tensor, mask: Mask) -> Tensor:
        """Targets of the masked patches: ``(B, N_mask, K)`` values or ``(B, N_mask)`` codes."""
        target = self.target(pixels, self.patch_size)
        if target.ndim == 2:
            return target.gather(1, mask.ids_masked)
        return gather_tokens(target, mask.ids_masked)

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        pixels = batch["pixels"]
        mask = self.mask(pixels.shape[0], generator)
        predicted = self.regress(self.encode(pixels, mask), mask)
        aligned = self.align_target(pixels, mask)
        loss_rec = self.target.loss(self.decode(predicted, mask), self.masked_target(pixels, mask))
        loss_align = (predicted.float() - aligned.float()).pow(2).mean()
        loss = loss_rec + self.align_weight * loss_align
        return {"loss": loss, "loss_rec": loss_rec.detach(), "loss_align": loss_align.detach()}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if self.alignment_encoder is None:
            return []
        return [(self.encoder, self.alignment_encoder)]

    # ----- pictures and checkpoints -------------------------------------------------

    @torch.no_grad()
    def reconstruct(
        self, pixels: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Original, masked input and reconstruction, all ``(B, C, H, W)`` in input space.

        Masked patches are predicted (de-normalized with the true patch statistics
        under ``norm_pix``); visible patches are pasted from the input. With a
        tokenizer target nothing can be drawn, and the masked input is shown instead.
        """
        mask = self.mask(pixels.shape[0], generator)
        patches = patchify(pixels.float(), self.patch_size)
        hidden = mask.mask.unsqueeze(-1)
        grid = self.encoder.grid_size
        filled = patches.masked_fill(hidden, 0.0)
        if self.target.is_pixels:
            pred = self.decode(self.regress(self.encode(pixels, mask), mask), mask).float()
            if getattr(self.target, "norm_pix", False):
                _, mean, std = normalize_patches(gather_tokens(patches, mask.ids_masked))
                pred = pred * std + mean
            filled = filled.scatter(1, mask.ids_masked.unsqueeze(-1).expand_as(pred), pred)
        return {
            "original": pixels.float(),
            "masked": unpatchify(patches.masked_fill(hidden, 0.0), self.patch_size, grid),
            "reconstruction": unpatchify(filled, self.patch_size, grid),
        }
