"""Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners")."""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse import lazy_instance
from torch import Tensor

from .base import PretrainModule
from .decoder import MAEDecoder
from .encoder import ViTEncoder, gather_tokens
from .masking import Mask, MaskGenerator, RandomMasking
from .patches import normalize_patches, patchify, unpatchify

__all__ = ["MAE"]


class MAE(PretrainModule):
    """MAE: encode the visible 25% of patches, decode all, regress the masked pixels.

    The encoder sees only visible patches (plus its class token); a small decoder
    receives the encoder's latents, one shared mask token per masked position and
    fixed sin-cos positions, and predicts every patch's pixels. The loss is the
    mean squared error on masked patches only, against per-patch normalized pixels
    when ``norm_pix_loss`` is set.

    Args:
        encoder: the shared ViT encoder.
        masking: mask generator (random, 75% by default).
        decoder_dim: decoder width (512 in the paper).
        decoder_depth: decoder blocks (8).
        decoder_heads: decoder attention heads (16).
        norm_pix_loss: regress per-patch normalized pixels (the paper's best setting).
        mask_repeats: in training, each loaded image is used this many times, each with
            its own mask (the same crop: unlike MAE-ST's repeated sampling, no new
            augmentation), so one decode feeds several samples; like MAE-ST's repeats, they
            are not counted in the effective batch of the learning-rate rule.
        **kwargs: optimizer, schedule and stability settings of :class:`PretrainModule`.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        masking: MaskGenerator = lazy_instance(RandomMasking, mask_ratio=0.75),  # noqa: B008
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        mask_repeats: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.masking = masking
        self.norm_pix_loss = norm_pix_loss
        if mask_repeats < 1:
            raise ValueError(f"mask_repeats must be >= 1, got {mask_repeats}")
        self.mask_repeats = mask_repeats
        self.patch_size = encoder.patch_size
        self.decoder = MAEDecoder(
            grid_size=encoder.grid_size,
            encoder_dim=encoder.embed_dim,
            out_dim=encoder.patch_size**2 * encoder.in_chans,
            num_prefix_tokens=encoder.num_prefix_tokens,
            dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            attn_backend=encoder.attn_backend,
            grad_checkpointing=encoder.grad_checkpointing,
        )

    # ----- the model, one step at a time -------------------------------------------

    def mask(self, batch_size: int, generator: torch.Generator | None = None) -> Mask:
        """Draws a mask over the encoder's patch grid, on the module's device."""
        return self.masking(batch_size, self.encoder.grid_size, self.device, generator)

    def encode(self, pixels: Tensor, mask: Mask) -> Tensor:
        """``(B, C, H, W) -> (B, P + N_keep, D)`` latents of the visible patches."""
        return self.encoder(pixels, mask.ids_keep)

    def decode(self, latent: Tensor, mask: Mask, ids_predict: Tensor | None = None) -> Tensor:
        """``(B, P + N_keep, D) -> (B, N or K, p * p * C)`` patch predictions."""
        return self.decoder(latent, mask.ids_restore, ids_predict)

    def target(self, pixels: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, N, p * p * C)`` regression target."""
        patches = patchify(pixels, self.patch_size)
        if self.norm_pix_loss:
            patches = normalize_patches(patches)[0]
        return patches

    def loss(self, pred_masked: Tensor, target_masked: Tensor) -> Tensor:
        """Mean squared error over masked patches: both ``(B, N_mask, K)``.

        Every sample masks the same number of patches, so the mean over all of them
        equals MAE's ``sum(loss * mask) / sum(mask)``.
        """
        return (pred_masked.float() - target_masked.float()).pow(2).mean()

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        pixels = batch["pixels"]
        if self.training and self.mask_repeats > 1:
            pixels = pixels.repeat(self.mask_repeats, *([1] * (pixels.ndim - 1)))
        mask = self.mask(pixels.shape[0], generator)
        latent = self.encode(pixels, mask)
        pred = self.decode(latent, mask, ids_predict=mask.ids_masked)
        target = gather_tokens(self.target(pixels), mask.ids_masked)
        return {"loss": self.loss(pred, target)}

    # ----- pictures and checkpoints -------------------------------------------------

    @torch.no_grad()
    def reconstruct(
        self, pixels: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Original, masked input and reconstruction, all ``(B, C, H, W)`` in input space.

        Under ``norm_pix_loss`` the predicted patches are mapped back with the mean
        and standard deviation of the true patches; visible patches are pasted from
        the input, as in the MAE visualizations.
        """
        mask = self.mask(pixels.shape[0], generator)
        pred = self.decode(self.encode(pixels, mask), mask).float()
        patches = patchify(pixels.float(), self.patch_size)
        if self.norm_pix_loss:
            _, mean, std = normalize_patches(patches)
            pred = pred * std + mean
        hidden = mask.mask.unsqueeze(-1)
        grid = self.encoder.grid_size
        return {
            "original": pixels.float(),
            "masked": unpatchify(patches.masked_fill(hidden, 0.0), self.patch_size, grid),
            "reconstruction": unpatchify(torch.where(hidden, pred, patches), self.patch_size, grid),
        }

    def samples_per_input(self) -> int:
        return self.mask_repeats
