"""Contrastive masked autoencoder (Huang et al., "Contrastive Masked Autoencoders are Stronger Vision Learners")."""

from __future__ import annotations

import copy
from typing import Any

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from .contrastive import info_nce
from .decoder import MAEDecoder
from .encoder import ViTEncoder, gather_tokens
from .heads import MLPHead
from .mae import MAE
from .masking import MaskGenerator, RandomMasking

__all__ = ["CMAE", "two_views"]


def two_views(batch: dict[str, Any], training: bool, method: str) -> tuple[Tensor, Tensor]:
    """The batch's ``views[0]``, ``views[1]``; outside training ``pixels`` twice when absent.

    Validation loaders emit only ``pixels``; training without ``views`` is a setup
    error, reported with the fix.
    """
    views = batch.get("views")
    if views is not None:
        if len(views) < 2:
            raise ValueError(f"{method} needs two views, got {len(views)}")
        return views[0], views[1]
    if training:
        raise ValueError(
            f"{method} trains on two views but the batch has no 'views'; give the data "
            "module a view-pair transform, e.g. `data.init_args.views: "
            "{class_path: mimkit.data.PixelShiftViews}` (CMAE) or "
            "`mimkit.data.TwoCropViews` (ViC-MAE)"
        )
    return batch["pixels"], batch["pixels"]


class CMAE(MAE):
    """CMAE: an MAE online branch plus a momentum target branch and InfoNCE.

    Online branch: the masked encoder on the online view, MAE's pixel decoder and a
    shallow feature decoder; the feature decoder's output is mean-pooled over all
    patches, projected and predicted. Target branch: an EMA copy of the encoder on
    the full, pixel-shifted and colour-augmented target view (no final norm, as in
    the official code), mean-pooled and passed through an EMA copy of the projector.
    Both EMA copies follow the base's cosine momentum schedule (0.996 -> 1).

    ``loss = reconstruction + contrastive_weight * 2 * tau * InfoNCE(tau)``; the
    ``2 * tau`` factor and both weights equal to 1 are those of the official code.
    The batch must carry ``views = [online, target]`` (see ``mimkit.data.PixelShiftViews``).

    Args:
        encoder: the shared ViT encoder.
        masking: mask generator; by default the official one, 65% of aligned 2 x 2 cells
            of patches (``RandomMasking(0.65, cell_size=2)``: 32 of 49 cells, so 128 of
            196 patches, at 224 px / 16); the patch grid must then have even sides.
        decoder_dim: width of both decoders (512).
        decoder_depth: pixel decoder blocks (8).
        decoder_heads: attention heads of both decoders (16).
        norm_pix_loss: regress per-patch normalized pixels.
        feature_decoder_depth: feature decoder blocks (2).
        projector_hidden_dim: hidden width of projector and predictor (1536).
        projector_dim: output width of projector and predictor (256).
        temperature: InfoNCE temperature (0.07).
        contrastive_weight: weight of the contrastive term.
        target_final_norm: apply the encoder's final norm in the target branch.
        **kwargs: optimizer, schedule and EMA settings of
            :class:`~mimkit.pretrain.PretrainModule` (``ema_momentum=0.996`` to
            ``ema_momentum_end=1.0`` by default).
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        masking: MaskGenerator = lazy_instance(RandomMasking, mask_ratio=0.65, cell_size=2),  # noqa: B008
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        feature_decoder_depth: int = 2,
        projector_hidden_dim: int = 1536,
        projector_dim: int = 256,
        temperature: float = 0.07,
        contrastive_weight: float = 1.0,
        target_final_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            encoder, masking, decoder_dim, decoder_depth, decoder_heads, norm_pix_loss, **kwargs
        )
        if getattr(self, "mask_repeats", 1) != 1:
            raise ValueError("CMAE pairs views per image; mask_repeats must be 1")
        masking.num_visible(encoder.grid_size)  # fails now on a grid the cells cannot tile
        self.temperature = temperature
        self.contrastive_weight = contrastive_weight
        self.target_final_norm = target_final_norm
        dim = encoder.embed_dim
        self.feature_decoder = MAEDecoder(
            grid_size=encoder.grid_size,
            encoder_dim=dim,
            out_dim=dim,
            num_prefix_tokens=encoder.num_prefix_tokens,
            dim=decoder_dim,
            depth=feature_decoder_depth,
            num_heads=decoder_heads,
            attn_backend=encoder.attn_backend,
            grad_checkpointing=encoder.grad_checkpointing,
        )
        self.projector = MLPHead(dim, projector_hidden_dim, projector_dim, num_layers=2)
        self.predictor = MLPHead(projector_dim, projector_hidden_dim, projector_dim, num_layers=2)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    # ----- the two branches ---------------------------------------------------------

    def online_embedding(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``(B, P + N_keep, D) -> (B, projector_dim)``: feature decoder, mean, projector, predictor."""
        features = self.feature_decoder(latent, ids_restore)  # (B, N, D)
        return self.predictor(self.projector(features.mean(dim=1)))

    @torch.no_grad()
    def target_embedding(self, pixels: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, projector_dim)``: EMA encoder on all patches, mean, EMA projector."""
        enc = self.target_encoder
        tokens = enc.embed_patches(pixels)
        prefix = enc.prefix_tokens(tokens.shape[0])
        if prefix is not None:
            tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        tokens = enc.blocks(enc.norm_pre(tokens))
        if self.target_final_norm:
            tokens = enc.norm(tokens)
        return self.target_projector(tokens[:, enc.num_prefix_tokens :].mean(dim=1))

    def contrastive_loss(self, online: Tensor, target: Tensor) -> Tensor:
        """``2 * tau * InfoNCE`` of online predictions against gathered, detached targets."""
        loss = info_nce(online, target.detach(), self.temperature, gather=self.training)
        return 2 * self.temperature * loss

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        online_view, target_view = two_views(batch, self.training, "CMAE")
        mask = self.mask(online_view.shape[0], generator)
        latent = self.encode(online_view, mask)
        pred = self.decode(latent, mask, ids_predict=mask.ids_masked)
        loss_rec = self.loss(pred, gather_tokens(self.target(online_view), mask.ids_masked))
        loss_ct = self.contrastive_loss(
            self.online_embedding(latent, mask.ids_restore), self.target_embedding(target_view)
        )
        loss = loss_rec + self.contrastive_weight * loss_ct
        return {"loss": loss, "loss_rec": loss_rec.detach(), "loss_contrastive": loss_ct.detach()}
