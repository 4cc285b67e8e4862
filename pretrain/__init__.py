"""Encoders, attention backends, masking and pretraining methods."""

from .attention import BackendAttention, use_backend, xformers_available
from .base import PretrainModule, default_adamw, ema_update, momentum_at, warmup_cosine
from .decoder import MAEDecoder
from .encoder import ViTEncoder, gather_tokens
from .mae import MAE
from .masking import BlockMasking, Mask, MaskGenerator, RandomMasking, block_mask, random_mask
from .patches import normalize_patches, patchify, unpatchify
from .preview import ReconstructionPreview

__all__ = [
    "MAE",
    "BackendAttention",
    "BlockMasking",
    "MAEDecoder",
    "Mask",
    "MaskGenerator",
    "PretrainModule",
    "RandomMasking",
    "ReconstructionPreview",
    "ViTEncoder",
    "block_mask",
    "default_adamw",
    "ema_update",
    "gather_tokens",
    "momentum_at",
    "normalize_patches",
    "patchify",
    "random_mask",
    "unpatchify",
    "use_backend",
    "warmup_cosine",
    "xformers_available",
]
