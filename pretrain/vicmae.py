"""ViC-MAE (Hernandez et al., "Visual Representation Learning from Unlabeled Video using Contrastive Masked Autoencoders")."""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse import lazy_instance
from torch import Tensor

from .cmae import two_views
from .contrastive import info_nce
from .encoder import ViTEncoder, gather_tokens
from .heads import MLPHead
from .mae import MAE
from .masking import MaskGenerator, RandomMasking

__all__ = ["ViCMAE"]


class ViCMAE(MAE):
    """ViC-MAE: MAE on two views plus InfoNCE between their pooled, projected latents.

    Both views (two crops of an image, or two frames of a video: without ``views``, a
    clip ``pixels`` of shape ``(B, C, T, H, W)`` gives its first and last frames, so a
    video data module with ``num_frames=2`` and a frame gap of ``sampling_rate`` feeds
    the image encoder frame pairs) are masked and
    encoded; each is reconstructed by the MAE decoder, and the mean of each view's
    visible patch latents goes through a projector. The contrastive term is
    SimCLR's symmetric InfoNCE over the global batch (both views' other samples are
    negatives). ``loss = contrastive_weight * InfoNCE + reconstruction_weight * mean
    of the two views' reconstruction losses`` (0.03 / 0.97 in the official code).

    Args:
        encoder: the shared ViT encoder.
        masking: mask generator (random, 50% as in the official code).
        decoder_dim: MAE decoder width (512).
        decoder_depth: MAE decoder blocks (8).
        decoder_heads: MAE decoder heads (16).
        norm_pix_loss: regress per-patch normalized pixels.
        projector_hidden_dim: projector hidden width (4096).
        projector_dim: projector output width (128).
        projector_layers: projector linear layers (3).
        temperature: InfoNCE temperature (0.1).
        contrastive_weight: weight of the contrastive term (0.03).
        reconstruction_weight: weight of the reconstruction term (0.97).
        **kwargs: optimizer and schedule settings of :class:`~mimkit.pretrain.PretrainModule`.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        masking: MaskGenerator = lazy_instance(RandomMasking, mask_ratio=0.5),  # noqa: B008
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        projector_hidden_dim: int = 4096,
        projector_dim: int = 128,
        projector_layers: int = 3,
        temperature: float = 0.1,
        contrastive_weight: float = 0.03,
        reconstruction_weight: float = 0.97,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            encoder, masking, decoder_dim, decoder_depth, decoder_heads, norm_pix_loss, **kwargs
        )
        if getattr(self, "mask_repeats", 1) != 1:
            raise ValueError("ViCMAE pairs views per image; mask_repeats must be 1")
        self.temperature = temperature
        self.contrastive_weight = contrastive_weight
        self.reconstruction_weight = reconstruction_weight
        self.projector = MLPHead(
            encoder.embed_dim, projector_hidden_dim, projector_dim, num_layers=projector_layers
        )

    def embed(self, latent: Tensor) -> Tensor:
        """``(B, P + N_keep, D) -> (B, projector_dim)``: mean of the patch latents, projector."""
        return self.projector(latent[:, self.encoder.num_prefix_tokens :].mean(dim=1))

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        clip = batch.get("pixels")
        if "views" not in batch and clip is not None and clip.ndim == 5 and clip.shape[2] >= 2:
            first, second = clip[:, :, 0], clip[:, :, -1]  # two frames of one video clip
        else:
            first, second = two_views(batch, self.training, "ViCMAE")
        batch_size = first.shape[0]
        pixels = torch.cat([first, second], dim=0)  # (2B, C, H, W): one pass for both views
        mask = self.mask(pixels.shape[0], generator)
        latent = self.encode(pixels, mask)
        pred = self.decode(latent, mask, ids_predict=mask.ids_masked)
        target = gather_tokens(self.target(pixels), mask.ids_masked)
        # Equal masked counts per sample: the mean over 2B is the mean of the two views' losses.
        loss_rec = self.loss(pred, target)
        latent_1, latent_2 = latent[:batch_size], latent[batch_size:]
        loss_ct = info_nce(
            self.embed(latent_1),
            self.embed(latent_2),
            self.temperature,
            symmetric=True,
            intra_view_negatives=True,
            gather=self.training,
        )
        loss = self.contrastive_weight * loss_ct + self.reconstruction_weight * loss_rec
        return {"loss": loss, "loss_rec": loss_rec.detach(), "loss_contrastive": loss_ct.detach()}
