"""Frozen-encoder features: pooling and one pass over a dataloader."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from mimkit.pretrain import ViTEncoder

__all__ = ["Pool", "check_pixels", "extract_features", "pool_tokens"]

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
            raise ValueError("pool='cls' needs an encoder with a class token; use pool='avg'")
        return tokens[:, 0]
    if pool == "avg":
        return tokens[:, num_prefix_tokens:].mean(dim=1)
    raise ValueError(f"pool must be 'cls' or 'avg', got {pool!r}")


def check_pixels(pixels: Tensor, encoder: ViTEncoder) -> None:
    """Raises one clear error when images do not fit the encoder (size or channels)."""
    expected = encoder.patch_embed.img_size
    if pixels.ndim != 4:
        raise ValueError(f"expected image batches (B, C, H, W), got shape {tuple(pixels.shape)}")
    if tuple(pixels.shape[-2:]) != tuple(expected) or pixels.shape[1] != encoder.in_chans:
        raise ValueError(
            f"the data gives {pixels.shape[1]}x{pixels.shape[2]}x{pixels.shape[3]} images but the "
            f"encoder expects {encoder.in_chans}x{expected[0]}x{expected[1]}; set the data's "
            "img_size to the encoder's, or the encoder's img_size to the data's (the position "
            "embedding is resampled when loading)"
        )


@torch.no_grad()
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
        batches: dict batches with ``pixels`` and ``label``.
        pool: ``cls`` or ``avg``.
        device: where to run; the encoder's device by default.
        dtype: dtype of the returned features (``float16`` halves host memory).

    Returns:
        ``(N, D)`` features and ``(N,)`` labels, on the CPU.
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval().to(device)
    feats, labels = [], []
    try:
        for batch in batches:
            pixels = batch["pixels"].to(device, non_blocking=True)
            check_pixels(pixels, encoder)
            tokens = encoder(pixels)
            feats.append(pool_tokens(tokens, pool, encoder.num_prefix_tokens).to("cpu", dtype))
            labels.append(batch["label"].to("cpu"))
    finally:
        encoder.train(was_training)
    if not feats:
        raise ValueError("no batches to extract features from")
    return torch.cat(feats), torch.cat(labels).long()
