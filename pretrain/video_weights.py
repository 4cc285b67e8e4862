"""Moving weights between image and video encoders, and between video grids.

Functions a checkpoint loader calls to put a state dict into a video :class:`ViTEncoder`:

* :func:`inflate_patch_embed`: a 2D patch projection ``(D, C, p, p)`` spread over a tubelet
  of ``t`` frames (image-to-video transfer);
* :func:`resample_tubelet`: a tubelet projection to another ``t`` and/or ``p``;
* :func:`resample_video_pos_embed`: position embeddings to another ``(T', H', W')`` grid
  (frame count or resolution changes), and :func:`image_pos_to_video` for an image table;
* :func:`from_official_videomae`: the official VideoMAE ``.pth`` layout to timm key names;
* :func:`adapt_state_dict`: all of the above, driven by a target encoder.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed
from torch import Tensor

from .encoder import ViTEncoder

__all__ = [
    "adapt_state_dict",
    "from_official_videomae",
    "image_pos_to_video",
    "inflate_patch_embed",
    "resample_tubelet",
    "resample_video_pos_embed",
]

PATCH_KEY = "patch_embed.proj.weight"


def inflate_patch_embed(
    weight: Tensor, tubelet_size: int, mode: Literal["average", "center"] = "average"
) -> Tensor:
    """Spreads a 2D patch projection over time.

    Args:
        weight: ``(D, C, p, p)``.
        tubelet_size: ``t``.
        mode: ``average`` repeats the kernel over the ``t`` frames divided by ``t``, so a
            static clip embeds exactly like its frame (I3D-style inflation); ``center``
            puts the kernel on the middle frame and zeros elsewhere.

    Returns:
        ``(D, C, t, p, p)``.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a (D, C, p, p) patch projection, got {tuple(weight.shape)}")
    if mode == "average":
        return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    if mode == "center":
        out = weight.new_zeros(*weight.shape[:2], tubelet_size, *weight.shape[2:])
        out[:, :, tubelet_size // 2] = weight
        return out
    raise ValueError(f"mode must be 'average' or 'center', got {mode!r}")


def resample_tubelet(weight: Tensor, tubelet_size: int, patch_size: int) -> Tensor:
    """Tubelet projection ``(D, C, t, p, p)`` to ``(D, C, t', p', p')``.

    Spatially each time slice goes through timm's ``resample_patch_embed``
    (pseudo-inverse resize, FlexiViT); in time the kernel is linearly interpolated and
    rescaled by ``t / t'``, so a static clip keeps its embedding.
    """
    dim, chans, t, p, _ = weight.shape
    if p != patch_size:
        flat = weight.permute(0, 2, 1, 3, 4).reshape(dim * t, chans, p, p)
        flat = resample_patch_embed(flat, [patch_size, patch_size])
        weight = flat.reshape(dim, t, chans, patch_size, patch_size).permute(0, 2, 1, 3, 4)
    if t != tubelet_size:
        x = weight.permute(0, 1, 3, 4, 2).reshape(-1, 1, t)
        x = F.interpolate(x.float(), size=tubelet_size, mode="linear", align_corners=False)
        x = x.to(weight.dtype) * (t / tubelet_size)
        weight = x.reshape(dim, chans, patch_size, patch_size, tubelet_size).permute(0, 1, 4, 2, 3)
    return weight.contiguous()


def resample_video_pos_embed(
    pos_embed: Tensor,
    old_grid: tuple[int, int, int],
    new_grid: tuple[int, int, int],
    num_prefix_tokens: int = 0,
) -> Tensor:
    """Trilinear resampling of a space-time position table.

    Args:
        pos_embed: ``(1, P + T * H * W, D)``, tokens time-major.
        old_grid: ``(T, H, W)``.
        new_grid: ``(T', H', W')``.
        num_prefix_tokens: ``P`` leading entries (class/register tokens) kept as they are.

    Returns:
        ``(1, P + T' * H' * W', D)``.
    """
    prefix, table = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = table.shape[-1]
    grid = table.reshape(1, *old_grid, dim).permute(0, 4, 1, 2, 3).float()  # (1, D, T, H, W)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="trilinear", align_corners=False)
    table = grid.permute(0, 2, 3, 4, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=1)


def image_pos_to_video(
    pos_embed: Tensor, grid_hw: tuple[int, int], frames: int, num_prefix_tokens: int = 0
) -> Tensor:
    """An image table ``(1, P + H * W, D)`` repeated over ``frames`` time steps."""
    prefix, table = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if table.shape[1] != grid_hw[0] * grid_hw[1]:
        raise ValueError(f"table of {table.shape[1]} positions is not a {grid_hw} grid")
    return torch.cat([prefix, table.repeat(1, frames, 1)], dim=1)


def from_official_videomae(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official VideoMAE (pretraining or fine-tuned) keys to timm's.

    Drops the ``encoder.`` prefix and the decoder / head, and joins the separate
    ``q_bias`` / ``v_bias`` into timm's ``qkv.bias`` with a zero key bias (VideoMAE has
    none). Keys already in timm's layout pass through.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("decoder", "encoder_to_decoder", "mask_token", "head.")):
            continue
        key = key.removeprefix("encoder.")
        if key.endswith("attn.v_bias"):
            continue
        if key.endswith("attn.q_bias"):
            base = key[: -len("q_bias")]
            v_bias = state_dict.get("encoder." + base + "v_bias", state_dict.get(base + "v_bias"))
            out[base + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
            continue
        out[key] = value
    return out


def adapt_state_dict(
    state_dict: dict[str, Tensor],
    encoder: ViTEncoder,
    source_grid: tuple[int, ...] | None = None,
    inflate: Literal["average", "center"] = "average",
) -> dict[str, Tensor]:
    """Makes an image or video state dict (timm keys) fit a video ``encoder``.

    The patch projection is inflated (2D source) or resampled (other tubelet or patch
    size); a ``pos_embed`` is repeated over time (image source) and resampled to the
    encoder's grid; without ``source_grid`` the encoder's own table is kept.

    Args:
        state_dict: timm-keyed weights (see :func:`from_official_videomae`).
        encoder: the video encoder to load into.
        source_grid: the source's token grid, ``(H, W)`` or ``(T, H, W)``, to resample its
            ``pos_embed``; ``None`` keeps the encoder's (e.g. a fixed sin-cos table).
        inflate: how a 2D patch projection is spread over time.

    Returns:
        A new dict, loadable with ``encoder.load_state_dict(..., strict=True)`` when the
        source has the encoder's blocks.
    """
    if not encoder.is_video:
        raise ValueError("adapt_state_dict targets a video encoder (num_frames set)")
    out = dict(state_dict)
    weight = out.get(PATCH_KEY)
    if weight is not None:
        if weight.ndim == 4:
            weight = inflate_patch_embed(weight, encoder.tubelet_size, inflate)
        out[PATCH_KEY] = resample_tubelet(weight, encoder.tubelet_size, encoder.patch_size)
    pos = out.get("pos_embed")
    prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
    if pos is not None and source_grid is None:
        out["pos_embed"] = encoder.pos_embed.detach().clone()  # unknown grid: the encoder's own
    elif pos is not None:
        assert source_grid is not None
        if len(source_grid) == 2:
            pos = image_pos_to_video(pos, (source_grid[0], source_grid[1]), 1, prefix)
            source_grid = (1, *source_grid)
        out["pos_embed"] = resample_video_pos_embed(
            pos, tuple(source_grid), encoder.grid_size, prefix
        )
    return out
