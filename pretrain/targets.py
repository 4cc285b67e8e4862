"""Pluggable reconstruction targets: normalized pixels, or codes of a discrete tokenizer."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from .patches import normalize_patches, patchify

__all__ = ["ReconstructionTarget", "PixelTarget", "TokenizerTarget"]


def _load_tokenizer(path: Path, module: str | None, kwargs: dict[str, Any]) -> torch.nn.Module:
    """TorchScript, or safetensors weights into an importable class; never ``pickle``."""
    if path.suffix != ".safetensors":
        if module is not None:
            raise ValueError(f"module is only used with a .safetensors file, got {path}")
        return torch.jit.load(str(path), map_location="cpu")
    if module is None:
        raise ValueError(f"{path} holds weights only: set module to the tokenizer's class path")
    module_name, _, class_name = module.rpartition(".")
    tokenizer = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    tokenizer.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return tokenizer


class ReconstructionTarget:
    """What a decoder predicts for every patch, and the loss against it.

    Attributes:
        is_pixels: predictions are (normalized) pixel patches that can be drawn.
    """

    is_pixels: bool = False

    def out_dim(self, patch_size: int, in_chans: int) -> int:
        """Values predicted per patch."""
        raise NotImplementedError

    def __call__(self, pixels: Tensor, patch_size: int) -> Tensor:
        """``(B, C, H, W) -> (B, N, K)`` float or ``(B, N)`` long per-patch targets."""
        raise NotImplementedError

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean loss of ``(B, M, out_dim)`` predictions against the gathered targets."""
        raise NotImplementedError


class PixelTarget(ReconstructionTarget):
    """Pixel patches, per-patch normalized with ``norm_pix`` (MAE's ``norm_pix_loss``); MSE.

    Args:
        norm_pix: normalize every patch by its mean and (unbiased) std.
    """

    is_pixels = True

    def __init__(self, norm_pix: bool = True) -> None:
        self.norm_pix = norm_pix

    def out_dim(self, patch_size: int, in_chans: int) -> int:
        return patch_size * patch_size * in_chans

    def __call__(self, pixels: Tensor, patch_size: int) -> Tensor:
        patches = patchify(pixels, patch_size)
        return normalize_patches(patches)[0] if self.norm_pix else patches

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred.float() - target.float()).pow(2).mean()

    def __repr__(self) -> str:
        return f"PixelTarget(norm_pix={self.norm_pix})"


class TokenizerTarget(ReconstructionTarget):
    """Discrete visual tokens (BEiT / CAE with a DALL-E style tokenizer); cross-entropy.

    The tokenizer comes from a local file, and nothing is downloaded or unpickled:
    either a TorchScript module (``torch.jit.load``), or a ``.safetensors`` state dict
    loaded into ``module`` (an importable ``nn.Module`` class) built with
    ``module_kwargs``. It receives the
    batch's normalized pixels (resized to ``input_size`` when set), runs without
    gradient in eval mode, and returns either code indices ``(B, N)`` / ``(B, h, w)``
    (integer) or logits ``(B, vocab_size, h, w)`` (float, arg-maxed here), one code
    per encoder patch. Any pixel mapping the tokenizer needs belongs inside it.

    Args:
        path: TorchScript file (``torch.jit.save`` of a scripted or traced tokenizer),
            or a ``.safetensors`` file of weights for ``module``.
        vocab_size: number of codes (DALL-E: 8192).
        input_size: side the tokenizer expects (CAE feeds DALL-E 112 px); ``None``
            passes the pixels unchanged.
        module: import path of the tokenizer class, for a ``.safetensors`` file.
        module_kwargs: keyword arguments of that class.
    """

    def __init__(
        self,
        path: str | Path,
        vocab_size: int = 8192,
        input_size: int | None = None,
        module: str | None = None,
        module_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file {self.path} does not exist")
        self.vocab_size = vocab_size
        self.input_size = input_size
        # Kept out of any module tree: never trained, never saved in checkpoints.
        self.tokenizer = _load_tokenizer(self.path, module, module_kwargs or {}).eval()
        for param in self.tokenizer.parameters():
            param.requires_grad_(False)

    def out_dim(self, patch_size: int, in_chans: int) -> int:
        return self.vocab_size

    @torch.no_grad()
    def __call__(self, pixels: Tensor, patch_size: int) -> Tensor:
        first = next(iter(self.tokenizer.parameters()), None)
        if first is not None and first.device != pixels.device:
            self.tokenizer = self.tokenizer.to(pixels.device)
        num_patches = (pixels.shape[-2] // patch_size) * (pixels.shape[-1] // patch_size)
        if self.input_size is not None and pixels.shape[-1] != self.input_size:
            pixels = F.interpolate(
                pixels.float(), size=(self.input_size, self.input_size), mode="bilinear"
            )
        # The codes are the target: computed in float32, outside any mixed-precision
        # autocast (a bf16 tokenizer flips arg-max codes), as CAE's own code does.
        with torch.autocast(pixels.device.type, enabled=False):
            codes = self.tokenizer(pixels.float())
        if codes.is_floating_point():
            codes = codes.argmax(dim=1)
        codes = codes.flatten(1).long()
        if codes.shape[1] != num_patches:
            raise ValueError(
                f"tokenizer {self.path} returned {codes.shape[1]} codes per image; the encoder "
                f"has {num_patches} patches (set input_size so the grids match)"
            )
        if int(codes.max()) >= self.vocab_size or int(codes.min()) < 0:
            raise ValueError(f"tokenizer codes fall outside [0, {self.vocab_size})")
        return codes

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(pred.float().flatten(0, 1), target.flatten())

    def __repr__(self) -> str:
        return f"TokenizerTarget(path={str(self.path)!r}, vocab_size={self.vocab_size})"
