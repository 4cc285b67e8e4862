"""The one encoder: a timm Vision Transformer that runs on visible tokens only.

Images use timm's 2D patch embedding; video (``num_frames`` set) swaps its projection
for a tubelet ``Conv3d`` at the same name, ``patch_embed.proj``, with the same blocks.
"""

from __future__ import annotations

import math
from typing import Any

import timm
import torch
from timm.layers import PatchEmbed
from timm.models import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import AttentionBackend, use_backend
from .pos_embed import VideoPosEmbed, sincos_2d, sincos_video

__all__ = ["ViTEncoder", "gather_tokens", "mae_init_weights"]


def gather_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """Selects tokens per sample.

    Args:
        tokens: ``(B, N, D)``.
        ids: ``(B, K)`` indices into ``N``.

    Returns:
        ``(B, K, D)``.
    """
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class ViTEncoder(nn.Module):
    """A timm ViT whose state dict keeps timm's key names, run on visible tokens.

    The modules and parameters of ``timm.create_model(name, num_classes=0, ...)`` are
    adopted under their own names, so ``encoder.state_dict()`` loads with
    ``strict=True`` into that timm model and back.

    Args:
        name: any timm Vision Transformer name, e.g. ``vit_base_patch16_224``.
        img_size: input resolution.
        patch_size: patch size; ``None`` keeps the model's default.
        in_chans: input channels.
        attn_backend: ``auto``, ``xformers``, ``sdpa`` or ``math``.
        grad_checkpointing: recompute each block in the backward pass to save memory.
        drop_path_rate: stochastic depth rate (0 for MAE pretraining).
        sincos_pos_embed: replace the learned position embedding by a fixed 2D sin-cos one.
        init: ``mae`` (xavier-uniform linears, as in the MAE reference) or ``timm``.
        model_kwargs: further keyword arguments for ``timm.create_model``. A pooling
            ``global_pool`` (``avg``, needed without a class token) implies
            ``fc_norm: false`` unless given, so the final LayerNorm acts on the tokens.
        num_frames: frames ``T`` of a video clip; ``None`` builds an image encoder.
        tubelet_size: frames ``t`` per tubelet (video only); tokens form a
            ``(T / t, H / p, W / p)`` grid, numbered time-major.
        video_pos_embed: space-time sin-cos layout (video only): ``joint`` (channels
            split between time, rows and columns), ``separable`` (2D spatial plus 1D
            temporal table, added; MAE-ST) or ``videomae`` (1D sinusoid over the token
            index, as in the official VideoMAE code).
    """

    def __init__(
        self,
        name: str = "vit_base_patch16_224",
        img_size: int = 224,
        patch_size: int | None = None,
        in_chans: int = 3,
        attn_backend: AttentionBackend = "auto",
        grad_checkpointing: bool = False,
        drop_path_rate: float = 0.0,
        sincos_pos_embed: bool = True,
        init: str = "mae",
        model_kwargs: dict[str, Any] | None = None,
        num_frames: int | None = None,
        tubelet_size: int = 2,
        video_pos_embed: VideoPosEmbed = "joint",
    ) -> None:
        super().__init__()
        timm_kwargs: dict[str, Any] = {"img_size": img_size, "in_chans": in_chans}
        if patch_size is not None:
            timm_kwargs["patch_size"] = patch_size
        timm_kwargs.update(model_kwargs or {})
        if timm_kwargs.get("global_pool") not in (None, "token", "map"):
            # timm would move the final LayerNorm after pooling (``fc_norm``); this encoder
            # returns tokens, so the norm stays on them (VideoMAE's encoder ``norm``)
            timm_kwargs.setdefault("fc_norm", False)
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models('vit_*')")
        try:
            vit = timm.create_model(
                name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **timm_kwargs
            )
        except TypeError as err:
            raise TypeError(
                f"cannot build timm model {name!r} as a VisionTransformer with {timm_kwargs}: {err}"
            ) from err
        if not isinstance(vit, VisionTransformer):
            raise TypeError(
                f"timm model {name!r} is a {type(vit).__name__}, not a VisionTransformer; "
                "mimkit encoders are built from timm's vision_transformer family"
            )
        if getattr(vit, "dynamic_img_size", False):
            raise ValueError(
                f"timm model {name!r} resizes its position table per input "
                "(dynamic_img_size=True), which masked pretraining does not support: add "
                "model_kwargs={'dynamic_img_size': False} and set img_size"
            )
        _check_patch_embedding(name, vit.patch_embed, img_size)
        for child_name, child in vit.named_children():
            self.add_module(child_name, child)
        for param_name, param in vit.named_parameters(recurse=False):
            self.register_parameter(param_name, param)
        if not hasattr(self, "cls_token"):
            self.cls_token = None
        if not hasattr(self, "reg_token"):
            self.reg_token = None

        self.timm_name = name
        self.timm_kwargs = timm_kwargs
        self.config: dict[str, Any] = {
            "name": name,
            "img_size": img_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "sincos_pos_embed": sincos_pos_embed,
            "model_kwargs": dict(model_kwargs or {}),
        }
        if num_frames is not None:
            self.config.update(
                num_frames=num_frames, tubelet_size=tubelet_size, video_pos_embed=video_pos_embed
            )
        self.embed_dim: int = vit.embed_dim
        self.num_features: int = vit.num_features
        self.num_prefix_tokens: int = vit.num_prefix_tokens
        self.no_embed_class: bool = vit.no_embed_class
        self.in_chans = in_chans
        self.patch_size: int = self.patch_embed.patch_size[0]
        self.grid_size: tuple[int, ...] = tuple(self.patch_embed.grid_size)
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size if num_frames is not None else 1
        self.video_pos_embed = video_pos_embed
        if num_frames is not None:
            self._make_video(num_frames, tubelet_size)
        self.num_patches: int = math.prod(self.grid_size)
        self.grad_checkpointing = grad_checkpointing
        self.attn_backend = attn_backend
        use_backend(self.blocks, attn_backend)

        if init == "mae":
            self.apply(mae_init_weights)
            proj = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
            for token in (self.cls_token, self.reg_token):
                if token is not None:
                    nn.init.normal_(token, std=0.02)
        elif init != "timm":
            raise ValueError(f"init must be 'mae' or 'timm', got {init!r}")
        if sincos_pos_embed:
            self._set_sincos_pos_embed()

    @property
    def is_video(self) -> bool:
        return self.num_frames is not None

    def _make_video(self, num_frames: int, tubelet_size: int) -> None:
        """Tubelet ``Conv3d`` at ``patch_embed.proj`` and a ``pos_embed`` for the video grid."""
        if num_frames % tubelet_size:
            raise ValueError(
                f"num_frames {num_frames} is not a multiple of tubelet_size {tubelet_size}"
            )
        image_proj = self.patch_embed.proj
        p = self.patch_size
        self.patch_embed.proj = nn.Conv3d(
            self.in_chans,
            self.embed_dim,
            kernel_size=(tubelet_size, p, p),
            stride=(tubelet_size, p, p),
            bias=image_proj.bias is not None,
        )
        self.grid_size = (num_frames // tubelet_size, *self.grid_size)
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        self.pos_embed = nn.Parameter(
            torch.zeros(1, prefix + math.prod(self.grid_size), self.embed_dim)
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _set_sincos_pos_embed(self) -> None:
        if self.is_video:
            patch_pos = sincos_video(self.grid_size, self.embed_dim, self.video_pos_embed)
        else:
            patch_pos = sincos_2d(self.grid_size, self.embed_dim)
        if not self.no_embed_class:
            prefix = torch.zeros(self.num_prefix_tokens, self.embed_dim)
            patch_pos = torch.cat([prefix, patch_pos], dim=0)
        with torch.no_grad():
            self.pos_embed.copy_(patch_pos.unsqueeze(0))
        self.pos_embed.requires_grad_(False)

    def set_attn_backend(self, backend: AttentionBackend) -> None:
        """Switches every attention layer to ``backend``."""
        self.attn_backend = backend
        use_backend(self.blocks, backend)

    def embed_patches(self, pixels: Tensor) -> Tensor:
        """Patch embedding plus position embedding, no prefix tokens.

        Args:
            pixels: ``(B, C, H, W)``, or ``(B, C, T, H, W)`` for video.

        Returns:
            ``(B, N, D)``, tokens time-major for video.
        """
        if self.is_video:
            tokens = self.embed_tubelets(pixels)
        else:
            tokens = self.patch_embed(pixels)
        pos = self.pos_embed if self.no_embed_class else self.pos_embed[:, self.num_prefix_tokens :]
        return tokens + pos

    def embed_tubelets(self, video: Tensor) -> Tensor:
        """Tubelet embedding: ``(B, C, T, H, W) -> (B, T/t * H/p * W/p, D)``."""
        expected = (self.in_chans, self.num_frames, *self.input_hw())
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"video encoder expects (B, C, T, H, W) = (B, {', '.join(map(str, expected))}), "
                f"got {tuple(video.shape)}"
            )
        tokens = self.patch_embed.proj(video)  # (B, D, T', H', W')
        return self.patch_embed.norm(tokens.flatten(2).transpose(1, 2))

    def input_hw(self) -> tuple[int, int]:
        """``(H, W)`` input resolution in pixels."""
        return (self.grid_size[-2] * self.patch_size, self.grid_size[-1] * self.patch_size)

    def prefix_tokens(self, batch_size: int) -> Tensor | None:
        """Class (and distillation or register) tokens with their position embedding:
        ``(B, P, D)`` or None."""
        tokens = (self.cls_token, getattr(self, "dist_token", None), self.reg_token)
        parts = [t for t in tokens if t is not None]
        if not parts:
            return None
        prefix = torch.cat(parts, dim=1)
        if not self.no_embed_class:
            prefix = prefix + self.pos_embed[:, : self.num_prefix_tokens]
        return prefix.expand(batch_size, -1, -1)

    def forward_blocks(self, tokens: Tensor) -> Tensor:
        """Runs the transformer blocks and the final norm: ``(B, L, D) -> (B, L, D)``."""
        tokens = self.norm_pre(tokens)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, pixels: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Encodes the visible patches.

        Args:
            pixels: ``(B, C, H, W)``, or ``(B, C, T, H, W)`` for video.
            ids_keep: ``(B, N_keep)`` indices of visible patches; ``None`` keeps all.

        Returns:
            ``(B, P + N_keep, D)`` with the ``P`` prefix (class/register) tokens first.
        """
        tokens = self.embed_patches(pixels)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        prefix = self.prefix_tokens(tokens.shape[0])
        if prefix is not None:
            tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        return self.forward_blocks(tokens)


def _check_patch_embedding(name: str, patch_embed: nn.Module, img_size: int) -> None:
    """Masked pretraining needs patches embedded apart: a visible token must see no pixel of
    a masked one, and the image must split into whole patches (the targets are patches)."""
    proj = getattr(patch_embed, "proj", None)
    patch = tuple(getattr(patch_embed, "patch_size", ()))
    if not (
        isinstance(patch_embed, PatchEmbed)
        and isinstance(proj, nn.Conv2d)
        and proj.kernel_size == proj.stride == patch
        and proj.padding == (0, 0)
        and not getattr(patch_embed, "dynamic_img_pad", False)
    ):
        raise TypeError(
            f"timm model {name!r} embeds patches with {type(patch_embed).__name__} "
            f"(proj: {type(proj).__name__}), not one non-overlapping patch convolution: its "
            "tokens would see pixels of masked patches; use a plain patch-embedding ViT"
        )
    if any(img_size % p for p in patch):
        lower, upper = (img_size // patch[0]) * patch[0], -(-img_size // patch[0]) * patch[0]
        raise ValueError(
            f"img_size {img_size} is not a multiple of the patch size {patch[0]} of {name!r}: "
            f"the patch grid would drop the last {img_size - lower} pixels of each row and "
            f"column, and masked pretraining reconstructs whole patches; use e.g. "
            f"{lower or upper} or {upper}"
        )


def mae_init_weights(module: nn.Module) -> None:
    """Xavier-uniform linears with zero bias, unit LayerNorms (the MAE reference init)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
