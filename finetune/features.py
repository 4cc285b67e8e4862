"""Frozen-encoder features: pooling and one pass over a dataloader."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from mimkit.pretrain import ViTEncoder
from mimkit.pretrain.errors import ConfigError

__all__ = [
    "ConfigError",
    "Pool",
    "check_pixels",
    "check_pool",
    "extract_features",
    "extract_pooled_features",
    "pool_tokens",
    "pooled_features",
]

Pool = Literal["cls", "avg"]


def pool_tokens(tokens: Tensor, pool: Pool, num_prefix_tokens: int) -> Tensor:
    """``(B, P + N, D) -> (B, D)``: the class token, or the mean of the patch tokens.

    Args:
        tokens: encoder output with ``P`` prefix tokens first.
        pool: ``cls`` (first token) or ``avg`` (mean over the ``N`` patch tokens).
        num_prefix_tokens: ``P``.
    """
    if pool == "cls":
        if num_prefix_tokens == 0:
            raise ConfigError("pool='cls' needs an encoder with a class token; use pool='avg'")
        return tokens[:, 0]
    if pool == "avg":
        return tokens[:, num_prefix_tokens:].mean(dim=1)
    raise ConfigError(f"pool must be 'cls' or 'avg', got {pool!r}")


def check_pool(pool: str, encoder: ViTEncoder) -> None:
    """Raises one clear :class:`ConfigError` when ``pool`` does not fit the encoder.

    ``cls`` needs a class token: without one the first token is a patch (or register)
    token, and pooling it would silently classify from one image corner.
    """
    if pool not in ("cls", "avg"):
        raise ConfigError(f"pool must be 'cls' or 'avg', got {pool!r}")
    if pool == "cls" and encoder.cls_token is None:
        raise ConfigError(
            f"pool='cls' needs an encoder with a class token, but {encoder.timm_name!r} is "
            "built without one (class_token: false, as VideoMAE); set pool: avg"
        )


def pooled_features(tokens: Tensor, pool: Pool, encoder: ViTEncoder) -> Tensor:
    """``(B, P + N, D) -> (B, D)``: the pooled tokens, then the encoder's ``fc_norm``.

    ``fc_norm`` is an identity unless the encoder normalizes after pooling (timm's
    ``fc_norm=True`` layout, e.g. one loaded from a ``FineTune(pool="avg")`` checkpoint),
    so the features are timm's ``forward_head(..., pre_logits=True)`` for that pooling.
    """
    feats = pool_tokens(tokens, pool, encoder.num_prefix_tokens)
    fc_norm = getattr(encoder, "fc_norm", None)
    return feats if fc_norm is None else fc_norm(feats)


def check_pixels(pixels: Tensor, encoder: ViTEncoder) -> None:
    """Raises one clear :class:`ConfigError` when images or clips do not fit the encoder.

    Args:
        pixels: ``(B, C, H, W)`` for an image encoder, ``(B, C, T, H, W)`` for a video one.
        encoder: the encoder they are for.
    """
    height, width = encoder.patch_embed.img_size
    if encoder.is_video:
        expected = (encoder.in_chans, encoder.num_frames, height, width)
        what, fix = "clips", "num_frames and img_size"
    else:
        expected = (encoder.in_chans, height, width)
        what, fix = "images", "img_size"
    if pixels.ndim != len(expected) + 1:
        layout = "(B, C, T, H, W) clips" if encoder.is_video else "(B, C, H, W) images"
        raise ConfigError(
            f"the encoder expects batches of {layout}, got shape {tuple(pixels.shape)}"
        )
    if tuple(pixels.shape[1:]) != expected:
        got = "x".join(map(str, pixels.shape[1:]))
        raise ConfigError(
            f"the data gives {got} {what} but the encoder expects "
            f"{'x'.join(map(str, expected))}; set the data's {fix} to the encoder's, or the "
            f"encoder's to the data's (position embeddings are resampled when loading)"
        )


def extract_features(
    encoder: ViTEncoder,
    batches: Iterable[dict[str, Any]],
    pool: Pool = "cls",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Runs the frozen encoder (eval mode) over every batch.

    Args:
        encoder: the encoder; put in eval mode and restored afterwards.
        batches: dict batches with ``pixels`` (images or clips) and ``label``.
        pool: ``cls`` or ``avg``; the pooled tokens then pass the encoder's ``fc_norm``
            (:func:`pooled_features`).
        device: where to run; the encoder's device by default.
        dtype: dtype of the returned features (``float16`` halves host memory).

    Returns:
        ``(N, D)`` features and ``(N,)`` labels, on the CPU.
    """
    feats, labels = extract_pooled_features(encoder, batches, [pool], device, dtype)
    return feats[pool], labels


@torch.no_grad()
def extract_pooled_features(
    encoder: ViTEncoder,
    batches: Iterable[dict[str, Any]],
    pools: Sequence[Pool],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`extract_features` for several poolings from one pass of the encoder.

    Returns:
        ``{pool: (N, D) features}`` and ``(N,)`` labels, on the CPU.
    """
    for pool in pools:
        check_pool(pool, encoder)
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval().to(device)
    feats: dict[str, list[Tensor]] = {pool: [] for pool in pools}
    labels = []
    try:
        for batch in batches:
            pixels = batch["pixels"].to(device, non_blocking=True)
            check_pixels(pixels, encoder)
            if not len(pixels):  # every sample of the batch was unreadable (and dropped)
                continue
            tokens = encoder(pixels)
            for pool in pools:
                feats[pool].append(pooled_features(tokens, pool, encoder).to("cpu", dtype))
            labels.append(batch["label"].to("cpu"))
    finally:
        encoder.train(was_training)
    if not labels:
        raise ValueError("no batches to extract features from")
    return {pool: torch.cat(parts) for pool, parts in feats.items()}, torch.cat(labels).long()
