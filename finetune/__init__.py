"""Checkpoint loading, fine-tuning, linear probing and k-NN evaluation of encoders."""

from .base import ClassifierModule, ConfigError
from .checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    LoadResult,
    RawCheckpoint,
    build_encoder,
    load_encoder,
    load_encoder_state,
    pooled_norm_config,
    read_checkpoint,
)
from .data import FineTuneImageFolder, eval_batches, finetune_train_transform
from .evaluate import (
    FeatureSet,
    cached_probe,
    compute_feature_sets,
    compute_features,
    knn_evaluate,
)
from .export import export_encoder
from .features import extract_features, extract_pooled_features, pool_tokens, pooled_features
from .finetune import FineTune
from .knn import knn_accuracy, knn_scores, topk_accuracy
from .probe import LinearProbe, linear_head, train_linear_head

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ClassifierModule",
    "ConfigError",
    "FeatureSet",
    "FineTune",
    "FineTuneImageFolder",
    "LinearProbe",
    "LoadResult",
    "RawCheckpoint",
    "build_encoder",
    "cached_probe",
    "compute_feature_sets",
    "compute_features",
    "eval_batches",
    "export_encoder",
    "extract_features",
    "extract_pooled_features",
    "finetune_train_transform",
    "knn_accuracy",
    "knn_evaluate",
    "knn_scores",
    "linear_head",
    "load_encoder",
    "load_encoder_state",
    "pool_tokens",
    "pooled_features",
    "pooled_norm_config",
    "read_checkpoint",
    "topk_accuracy",
    "train_linear_head",
]
