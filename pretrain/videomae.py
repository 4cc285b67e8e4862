"""Video masked autoencoders: VideoMAE (Tong et al. 2022), MAE-ST (Feichtenhofer et al. 2022)
and VideoMAE V2 dual masking (Wang et al. 2023), one module with their options."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from .base import PretrainModule
from .decoder import MAEDecoder
from .encoder import ViTEncoder, gather_tokens
from .errors import ConfigError
from .masking import Mask, MaskGenerator, TubeMasking, dual_mask_queries
from .patches import normalize_patches

__all__ = ["VideoMAE", "normalize_tubelets", "patchify_video", "unpatchify_video"]


def patchify_video(video: Tensor, patch_size: int, tubelet_size: int) -> Tensor:
    """Splits clips into flattened tube patches.

    Args:
        video: ``(B, C, T, H, W)``.
        patch_size: ``p``.
        tubelet_size: ``t``.

    Returns:
        ``(B, N, t * p * p * C)`` with ``N = T/t * H/p * W/p`` time-major (the encoder's
        token order) and each tube flattened as ``(t, p, p, C)``.
    """
    b, c, frames, height, width = video.shape
    gt, gh, gw = frames // tubelet_size, height // patch_size, width // patch_size
    x = video.reshape(b, c, gt, tubelet_size, gh, patch_size, gw, patch_size)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T', H', W', t, p, p, C)
    return x.reshape(b, gt * gh * gw, tubelet_size * patch_size * patch_size * c)


def unpatchify_video(
    patches: Tensor, patch_size: int, tubelet_size: int, grid_size: tuple[int, int, int]
) -> Tensor:
    """Inverse of :func:`patchify_video`: ``(B, N, t * p * p * C) -> (B, C, T, H, W)``."""
    b = patches.shape[0]
    gt, gh, gw = grid_size
    c = patches.shape[-1] // (tubelet_size * patch_size * patch_size)
    x = patches.reshape(b, gt, gh, gw, tubelet_size, patch_size, patch_size, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', t, H', p, W', p)
    return x.reshape(b, c, gt * tubelet_size, gh * patch_size, gw * patch_size)


def normalize_tubelets(
    patches: Tensor, channels: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor, Tensor]:
    """VideoMAE's target: each tube patch normalized per channel.

    Mean and unbiased standard deviation are taken over the ``t * p * p`` pixels of one
    channel of one tube; the target is ``(x - mean) / (std + eps)``, as in VideoMAE.

    Args:
        patches: ``(B, N, t * p * p * C)`` from :func:`patchify_video`.
        channels: ``C``.

    Returns:
        ``(normalized, mean, std)``, ``mean``/``std`` of shape ``(B, N, 1, C)``.
    """
    x = patches.unflatten(-1, (-1, channels))  # (B, N, t * p * p, C)
    mean = x.mean(dim=-2, keepdim=True)
    std = x.var(dim=-2, keepdim=True).sqrt() + eps
    return ((x - mean) / std).flatten(-2), mean, std


def predicted_frames_per_token(num_frames: int, tubelet_size: int, pred_frames: int | None) -> int:
    """Frames each token regresses: ``tubelet_size``, or ``tubelet_size * pred_frames / T``.

    Raises:
        ValueError: if ``pred_frames`` does not give a whole number of frames per token.
    """
    if pred_frames is None:
        return tubelet_size
    per_token, remainder = divmod(tubelet_size * pred_frames, num_frames)
    if not 1 <= pred_frames <= num_frames or remainder or per_token < 1:
        raise ValueError(
            f"pred_frames={pred_frames} does not give a whole number of regressed frames per "
            f"token for {num_frames}-frame clips and tubelets of {tubelet_size}: use a "
            f"multiple of {num_frames // math.gcd(num_frames, tubelet_size)} up to {num_frames}"
        )
    return per_token


class VideoMAE(PretrainModule):
    """VideoMAE / MAE-ST: encode the few visible tube patches, regress the masked ones.

    The encoder is the shared :class:`ViTEncoder` built for video (``num_frames``,
    ``tubelet_size``): tubelets of ``t x p x p`` pixels, space-time sin-cos positions,
    visible tokens only. A small decoder (384 wide, 4 blocks for ViT-B in VideoMAE)
    predicts the pixels of masked tubes; the loss is the mean squared error over them.

    The papers' variants are settings of this one module:

    * VideoMAE: ``TubeMasking(0.9)``, no class token, ``norm_per_channel=True`` (each
      tube normalized per channel), ``video_pos_embed: videomae`` on the encoder.
    * MAE-ST: ``RandomMasking(0.9)`` over all ``T' * H' * W'`` tokens, a class token,
      ``video_pos_embed: separable``, ``tubelet_size: 2``, decoder depth 4,
      ``norm_per_channel=False`` (MAE's per-patch normalization), ``decoder_embed_bias=True``,
      ``init="mae"``.
    * VideoMAE V2 dual masking: ``decoder_masking=RunningCellMasking(0.5)``; the decoder
      then processes only the visible latents plus a mask token at each decoder-visible
      position, and the loss covers those the encoder masked
      (:func:`~mimkit.pretrain.masking.dual_mask_queries`).

    Targets are built from the normalized input clip; per-channel tube normalization makes
    them independent of the data's per-channel mean and std (up to ``eps``), whole-tube
    normalization only when mean and std are the same for every channel.

    Args:
        encoder: the shared ViT encoder, built with ``num_frames``.
        masking: encoder mask generator (tube 0.9 by default).
        decoder_dim: decoder width (384 for ViT-B in VideoMAE, 512 in MAE-ST).
        decoder_depth: decoder blocks (4).
        decoder_heads: decoder attention heads (6).
        norm_pix_loss: regress per-patch normalized pixels.
        norm_per_channel: normalize each channel of a tube separately (VideoMAE);
            ``False`` normalizes the whole flattened tube (MAE, MAE-ST).
        decoder_masking: VideoMAE V2 decoder mask generator; ``None`` decodes every
            masked token.
        pred_frames: MAE-ST's ``pred_t_dim``: regress only these frames of the clip, at
            ``linspace(0, T - 1, pred_frames)`` (8 of 16: frames 0, 2, ..., 12, 15), so each
            token predicts ``tubelet_size * pred_frames / T`` frames; ``None`` regresses
            every frame of its tube (VideoMAE).
        decoder_embed_bias: a bias in the encoder-to-decoder projection; VideoMAE and V2
            have none (``encoder_to_decoder``), MAE-ST has one (MAE's ``decoder_embed``).
        init: ``videomae``: MAE's xavier init except where VideoMAE's code differs (the
            tubelet convolution and the encoder-to-decoder projection keep PyTorch's
            default init; the mask token is normal with std 0.02 cut at +-0.02);
            ``mae``: MAE's init throughout (MAE-ST).
        **kwargs: optimizer, schedule and stability settings of :class:`PretrainModule`.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        masking: MaskGenerator = lazy_instance(TubeMasking, mask_ratio=0.9),  # noqa: B008
        decoder_dim: int = 384,
        decoder_depth: int = 4,
        decoder_heads: int = 6,
        norm_pix_loss: bool = True,
        norm_per_channel: bool = True,
        decoder_masking: MaskGenerator | None = None,
        pred_frames: int | None = None,
        decoder_embed_bias: bool = False,
        init: Literal["videomae", "mae"] = "videomae",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not encoder.is_video:
            raise ValueError("VideoMAE needs a video encoder: set the encoder's num_frames")
        self.pred_frames = pred_frames
        self.pred_tubelet = predicted_frames_per_token(
            encoder.num_frames, encoder.tubelet_size, pred_frames
        )
        self.encoder = encoder
        self.masking = masking
        self.decoder_masking = decoder_masking
        self.norm_pix_loss = norm_pix_loss
        self.norm_per_channel = norm_per_channel
        self.patch_size = encoder.patch_size
        self.tubelet_size = encoder.tubelet_size
        self.decoder = MAEDecoder(
            grid_size=encoder.grid_size,
            encoder_dim=encoder.embed_dim,
            out_dim=self.pred_tubelet * encoder.patch_size**2 * encoder.in_chans,
            num_prefix_tokens=encoder.num_prefix_tokens,
            dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            attn_backend=encoder.attn_backend,
            grad_checkpointing=encoder.grad_checkpointing,
            video_pos_embed=encoder.video_pos_embed,
            embed_bias=decoder_embed_bias,
        )
        if init == "videomae":
            self._videomae_init()
        elif init != "mae":
            raise ValueError(f"init must be 'videomae' or 'mae', got {init!r}")

    def _videomae_init(self) -> None:
        """The three places where VideoMAE's initialization differs from MAE's.

        Its tubelet convolution and its ``encoder_to_decoder`` projection are outside the
        modules its xavier init is applied to, so they keep PyTorch's defaults, and its
        ``trunc_normal_`` cuts the mask token at one standard deviation.
        """
        self.encoder.patch_embed.proj.reset_parameters()
        self.decoder.embed.reset_parameters()
        nn.init.trunc_normal_(self.decoder.mask_token, std=0.02, a=-0.02, b=0.02)

    # ----- the model, one step at a time -------------------------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        frames = getattr(datamodule, "num_frames", None)
        if frames is not None and frames != self.encoder.num_frames:
            raise ConfigError(
                f"the data gives {frames}-frame clips but the encoder is built for "
                f"{self.encoder.num_frames}; set data.init_args.num_frames and "
                "model.init_args.encoder.init_args.num_frames to the same value"
            )

    def mask(self, batch_size: int, generator: torch.Generator | None = None) -> Mask:
        """Draws the encoder mask over the ``(T', H', W')`` token grid."""
        return self.masking(batch_size, self.encoder.grid_size, self.device, generator)

    def decoder_queries(
        self, mask: Mask, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Tokens to decode ``(B, K)`` and which of them the loss scores (``None``: all).

        Without decoder masking: every masked token, all scored. With it (VideoMAE V2):
        every decoder-visible token, scored where the encoder masked it.
        """
        if self.decoder_masking is None:
            return mask.ids_masked, None
        decoder_mask = self.decoder_masking(
            mask.mask.shape[0], self.encoder.grid_size, self.device, generator
        )
        return dual_mask_queries(mask, decoder_mask)

    def encode(self, video: Tensor, mask: Mask) -> Tensor:
        """``(B, C, T, H, W) -> (B, P + N_keep, D)`` latents of the visible tubes."""
        return self.encoder(video, mask.ids_keep)

    def decode(self, latent: Tensor, mask: Mask, ids_query: Tensor) -> Tensor:
        """``(B, P + N_keep, D) -> (B, K, t * p * p * C)`` predictions for ``ids_query``.

        With decoder masking only the queried positions' mask tokens enter the decoder;
        otherwise all masked positions do and the queried ones are returned.
        """
        if self.decoder_masking is None:
            return self.decoder(latent, mask.ids_restore, ids_query)
        return self.decoder.forward_subset(latent, mask.ids_keep, ids_query)

    def target(self, video: Tensor, ids: Tensor | None = None) -> Tensor:
        """``(B, C, T, H, W) -> (B, N, t * p * p * C)`` regression target, or ``(B, K, ...)``
        for the tubes ``ids`` only (each tube is normalized on its own, so gathering first
        gives the same values for less work)."""
        patches = patchify_video(self.target_frames(video), self.patch_size, self.pred_tubelet)
        if ids is not None:
            patches = gather_tokens(patches, ids)
        if not self.norm_pix_loss:
            return patches
        if self.norm_per_channel:
            return normalize_tubelets(patches, video.shape[1])[0]
        return normalize_patches(patches)[0]

    def target_frames(self, video: Tensor) -> Tensor:
        """``(B, C, T, H, W) -> (B, C, T_pred, H, W)``: the frames the decoder regresses."""
        if self.pred_frames is None:
            return video
        frames = torch.linspace(0, video.shape[2] - 1, self.pred_frames, device=video.device)
        return video.index_select(2, frames.long())

    def loss(self, pred: Tensor, target: Tensor, scored: Tensor | None = None) -> Tensor:
        """Mean squared error over the scored tubes.

        Args:
            pred: ``(B, K, t * p * p * C)`` predictions.
            target: the same shape.
            scored: ``(B, K)`` bool, the tubes to count (``None``: all); the mean is over
                all scored tubes of the batch, as VideoMAE V2's code.
        """
        error = (pred.float() - target.float()).pow(2)
        if scored is None:
            return error.mean()
        weight = scored.to(error.dtype)
        return (error.mean(dim=-1) * weight).sum() / weight.sum().clamp_min(1.0)

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        video = batch["pixels"]
        mask = self.mask(video.shape[0], generator)
        ids_query, scored = self.decoder_queries(mask, generator)
        pred = self.decode(self.encode(video, mask), mask, ids_query)
        target = self.target(video.float(), ids_query)
        return {"loss": self.loss(pred, target, scored)}

    # ----- pictures and checkpoints -------------------------------------------------

    @torch.no_grad()
    def reconstruct(
        self, pixels: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Original, masked input and reconstruction, all ``(B, C, T, H, W)`` in input space.

        Every masked tube is decoded (also under dual masking: the decoder runs on all
        mask tokens for pictures). Normalized predictions are mapped back with the true
        tubes' statistics; visible tubes are pasted from the input.
        """
        mask = self.mask(pixels.shape[0], generator)
        pred = self.decoder(self.encode(pixels, mask), mask.ids_restore).float()
        video = pixels.float()
        p, t, grid = self.patch_size, self.tubelet_size, self.encoder.grid_size
        hidden = mask.mask.unsqueeze(-1)
        tubes = patchify_video(video, p, t)
        patches = (
            tubes
            if self.pred_frames is None
            else patchify_video(self.target_frames(video), p, self.pred_tubelet)
        )
        masked = tubes.masked_fill(hidden, 0.0)
        if self.norm_pix_loss and self.norm_per_channel:
            _, mean, std = normalize_tubelets(patches, video.shape[1])
            pred = (pred.unflatten(-1, (-1, video.shape[1])) * std + mean).flatten(-2)
        elif self.norm_pix_loss:
            _, mean, std = normalize_patches(patches)
            pred = pred * std + mean
        filled = torch.where(hidden, pred, patches)
        reconstruction = unpatchify_video(filled, p, self.pred_tubelet, grid)
        # regressed frames only (MAE-ST's pred_frames): each one stands for its neighbours
        reconstruction = reconstruction.repeat_interleave(t // self.pred_tubelet, dim=2)
        return {
            "original": video,
            "masked": unpatchify_video(masked, p, t, grid),
            "reconstruction": reconstruction,
        }

    def samples_per_input(self) -> int:
        """Clips per loaded video: the datamodule's ``repeat_aug`` (MAE-ST repeated sampling).

        They multiply the samples the model sees, not the lr's effective batch."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        return int(getattr(datamodule, "repeat_aug", 1) or 1)
