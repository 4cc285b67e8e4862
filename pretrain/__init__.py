"""Encoders, attention backends, masking and pretraining methods."""

from .attention import BackendAttention, use_backend, xformers_available
from .base import PretrainModule, default_adamw, ema_update, momentum_at, warmup_cosine
from .color_masking import ColorMasking, color_mask, filtered_noise
from .decoder import MAEDecoder
from .encoder import ViTEncoder, gather_tokens
from .errors import BackendUnavailableError, ConfigError
from .mae import MAE
from .masking import (
    BlockMasking,
    Mask,
    MaskGenerator,
    RandomMasking,
    block_mask,
    random_cell_mask,
    random_mask,
)
from .patches import normalize_patches, patchify, unpatchify
from .preview import ReconstructionPreview

__all__ = [
    "MAE",
    "BackendAttention",
    "BackendUnavailableError",
    "BlockMasking",
    "ColorMasking",
    "ConfigError",
    "MAEDecoder",
    "Mask",
    "MaskGenerator",
    "PretrainModule",
    "RandomMasking",
    "ReconstructionPreview",
    "ViTEncoder",
    "block_mask",
    "color_mask",
    "default_adamw",
    "ema_update",
    "filtered_noise",
    "gather_tokens",
    "momentum_at",
    "normalize_patches",
    "patchify",
    "random_cell_mask",
    "random_mask",
    "unpatchify",
    "use_backend",
    "warmup_cosine",
    "xformers_available",
]

# Video masked autoencoders.
from .masking import (  # noqa: E402
    RunningCellMasking,
    TubeMasking,
    dual_mask_queries,
    running_cell_mask,
    tube_mask,
)
from .videomae import VideoMAE  # noqa: E402

__all__ += [
    "RunningCellMasking",
    "TubeMasking",
    "VideoMAE",
    "dual_mask_queries",
    "running_cell_mask",
    "tube_mask",
]

# Context autoencoder and contrastive masked autoencoders.
from .cae import CAE, CAEDecoder  # noqa: E402
from .cmae import CMAE  # noqa: E402
from .contrastive import gather_with_grad, info_nce  # noqa: E402
from .heads import MLPHead  # noqa: E402
from .regressor import CrossAttention, LatentRegressor  # noqa: E402
from .targets import PixelTarget, ReconstructionTarget, TokenizerTarget  # noqa: E402
from .vicmae import ViCMAE  # noqa: E402

__all__ += [
    "CAE",
    "CAEDecoder",
    "CMAE",
    "CrossAttention",
    "LatentRegressor",
    "MLPHead",
    "PixelTarget",
    "ReconstructionTarget",
    "TokenizerTarget",
    "ViCMAE",
    "gather_with_grad",
    "info_nce",
]
