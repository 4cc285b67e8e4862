"""Frozen-feature evaluations end to end: k-NN and the cached-feature linear probe."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from mimkit.pretrain import ViTEncoder

from .data import eval_batches
from .features import Pool, extract_pooled_features
from .knn import knn_accuracy, topk_accuracy
from .probe import train_linear_head

__all__ = [
    "FeatureSet",
    "cached_probe",
    "compute_feature_sets",
    "compute_features",
    "knn_evaluate",
]


class FeatureSet:
    """Train and validation features of one encoder on one data module.

    Attributes:
        train: ``(N, D)`` features of the un-augmented training split.
        train_labels: ``(N,)``.
        val: ``(M, D)``.
        val_labels: ``(M,)``.
        seconds: extraction time.
    """

    def __init__(self, train, train_labels, val, val_labels, seconds: float) -> None:
        self.train, self.train_labels = train, train_labels
        self.val, self.val_labels = val, val_labels
        self.seconds = seconds


def compute_features(
    encoder: ViTEncoder,
    datamodule: L.LightningDataModule,
    pool: Pool = "cls",
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> FeatureSet:
    """Extracts pooled features of both splits once."""
    return compute_feature_sets(encoder, datamodule, [pool], device, batch_size, dtype)[pool]


def compute_feature_sets(
    encoder: ViTEncoder,
    datamodule: L.LightningDataModule,
    pools: Sequence[Pool],
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, FeatureSet]:
    """``{pool: FeatureSet}`` from one pass of the encoder over each split; every set
    reports the time of that one extraction."""
    start = time.perf_counter()
    train, train_labels = extract_pooled_features(
        encoder, eval_batches(datamodule, "train", batch_size), pools, device, dtype
    )
    val, val_labels = extract_pooled_features(
        encoder, eval_batches(datamodule, "val", batch_size), pools, device, dtype
    )
    seconds = time.perf_counter() - start
    return {
        pool: FeatureSet(train[pool], train_labels, val[pool], val_labels, seconds)
        for pool in pools
    }


def _num_classes(datamodule: Any, feats: FeatureSet) -> int:
    found = int(max(feats.train_labels.max(), feats.val_labels.max())) + 1
    declared = getattr(datamodule, "num_classes", None)
    return int(declared) if declared is not None else found


def knn_evaluate(
    feats: FeatureSet,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    device: torch.device | str | None = None,
    query_batch: int = 1024,
    train_chunk: int = 65536,
) -> dict[str, float]:
    """k-NN top-1 / top-5 (%) of the validation features against the training features."""
    return knn_accuracy(
        feats.train,
        feats.train_labels,
        feats.val,
        feats.val_labels,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        query_batch=query_batch,
        train_chunk=train_chunk,
        device=device,
    )


def cached_probe(
    feats: FeatureSet,
    num_classes: int,
    epochs: int = 90,
    batch_size: int = 256,
    base_lr: float = 0.1,
    warmup_epochs: float = 10,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Fast linear probe on cached features; top-1 / top-5 (%) on the validation features."""
    head = train_linear_head(
        feats.train,
        feats.train_labels,
        num_classes,
        epochs=epochs,
        batch_size=batch_size,
        base_lr=base_lr,
        warmup_epochs=warmup_epochs,
        device=device,
        seed=seed,
    )
    with torch.no_grad():
        scores = head(feats.val.to(next(head.parameters()).device, torch.float32))
    return topk_accuracy(scores, feats.val_labels)
