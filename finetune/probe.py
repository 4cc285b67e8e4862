"""Linear probing: a BatchNorm (no affine) + linear head on a frozen encoder.

The recipe of MAE (He et al. 2022, Appendix A.3, Table 10): the encoder is frozen and kept
in eval mode, an extra BatchNorm without affine parameters normalizes the features, the
linear head is trained with LARS (base lr 0.1 per 256, weight decay 0, momentum 0.9,
batch 16384, 90 epochs, 10 warmup epochs, cosine decay), class token features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from timm.optim import Lars
from torch import Tensor, nn
from torch.optim import Optimizer

from mimkit.pretrain import warmup_cosine

from .base import ClassifierModule

__all__ = ["LinearProbe", "default_lars", "linear_head", "train_linear_head"]


def default_lars(params: Iterable[Any]) -> Optimizer:
    """LARS with MAE's linear-probing settings (base lr 0.1 per 256, wd 0, momentum 0.9)."""
    return Lars(params, lr=0.1, momentum=0.9, weight_decay=0.0)


def linear_head(dim: int, num_classes: int) -> nn.Sequential:
    """``BatchNorm1d(affine=False, eps=1e-6)`` then ``Linear`` (weight ~ N(0, 0.01), zero bias)."""
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


def head_param_groups(head: nn.Sequential) -> list[dict[str, Any]]:
    """Weight with LARS adaptation (``always_adapt``, as MAE's LARS does for every ≥2-D
    parameter even at weight decay 0); bias without it, as MAE excludes 1-D parameters."""
    weights = [p for p in head.parameters() if p.ndim > 1]
    others = [p for p in head.parameters() if p.ndim <= 1]
    return [
        {"params": weights, "always_adapt": True},
        {"params": others, "weight_decay": 0.0, "always_adapt": False},
    ]


class LinearProbe(ClassifierModule):
    """A linear classifier on the frozen features of a pretrained encoder.

    The encoder never trains: its parameters have ``requires_grad=False``, it stays in
    eval mode (dropout, drop path off) whatever the trainer does, and its forward pass runs
    under ``torch.no_grad``.

    Args:
        optimizer: LARS with base lr 0.1 per 256 samples by default.
        warmup_epochs: 10 in MAE's recipe.
        **kwargs: encoder, checkpoint and class settings of
            :class:`~mimkit.finetune.ClassifierModule`.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = default_lars,
        warmup_epochs: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, warmup_epochs=warmup_epochs, **kwargs)
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def build_head(self, num_classes: int) -> None:
        self.head = linear_head(self.encoder.num_features, num_classes)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.encoder.eval()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        return head_param_groups(self.head)

    def forward(self, pixels: Tensor) -> Tensor:
        with torch.no_grad():
            feats = self.features(pixels)
        return self.head(feats.float())


def train_linear_head(
    train_features: Tensor,
    train_labels: Tensor,
    num_classes: int,
    epochs: int = 90,
    batch_size: int = 256,
    base_lr: float = 0.1,
    warmup_epochs: float = 10,
    momentum: float = 0.9,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> nn.Sequential:
    """The fast linear probe: trains the head on cached features (features extracted once).

    Same head, optimizer (LARS, lr ``base_lr * batch / 256``) and per-step warmup + cosine
    schedule as :class:`LinearProbe`, without re-running the encoder every epoch. The
    features are those of one fixed (un-augmented) view, so it matches a probe trained
    without augmentation.

    Args:
        train_features: ``(N, D)``.
        train_labels: ``(N,)``.
        num_classes: classes.
        epochs: passes over the features.
        batch_size: head batch size.
        base_lr: lr per 256 samples.
        warmup_epochs: linear warmup length.
        momentum: LARS momentum.
        seed: seed of the head init and the shuffling.
        device: where to train; the features' device by default.

    Returns:
        The trained head (eval mode).
    """
    device = torch.device(device) if device is not None else train_features.device
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = linear_head(train_features.shape[1], num_classes).to(device)
    feats = train_features.to(device, torch.float32)
    labels = train_labels.to(device)
    optimizer = Lars(head_param_groups(head), lr=base_lr * batch_size / 256, momentum=momentum)
    steps_per_epoch = max(1, math.floor(len(feats) / batch_size))
    total, warmup = epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total)
    )
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(feats), generator=generator).to(device)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head.eval()


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
