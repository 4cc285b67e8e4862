"""The shared base of the supervised evaluations (fine-tuning, linear probing)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from mimkit.pretrain import PretrainModule, ViTEncoder

from .checkpoint import LoadResult, build_encoder, load_encoder_state, read_checkpoint
from .features import Pool, check_pixels, pool_tokens

__all__ = ["ClassifierModule", "ConfigError"]


class ConfigError(ValueError):
    """An evaluation setting contradicts the data or the checkpoint; the message says how."""


class ClassifierModule(PretrainModule):
    """An encoder (loaded from a checkpoint) plus a classification head, on labeled data.

    Inherits the optimizer plumbing of :class:`~mimkit.pretrain.PretrainModule` (lr scaled
    by ``effective_batch / 256``, per-step warmup then cosine, NaN-step skipping). A
    subclass builds its head (:meth:`build_head`) and maps tokens to logits
    (:meth:`forward`); it may override :meth:`param_groups` (a group's ``lr_scale``
    multiplies its lr) and :meth:`loss`.

    Args:
        init_from: checkpoint to load the encoder from (any format
            :func:`~mimkit.finetune.read_checkpoint` accepts); ``None`` keeps the encoder's
            own initialization (a random-init baseline).
        encoder: the encoder; ``None`` rebuilds the one ``init_from`` describes.
        num_classes: classes of the head; ``None`` takes the data module's ``num_classes``.
        img_size: input resolution (linked from the data by the CLI); when rebuilding from
            a checkpoint the position embedding is resampled to it.
        pool: ``cls`` (class token) or ``avg`` (mean of patch tokens).
        drop_path_rate: stochastic depth of a rebuilt encoder.
        attn_backend: attention backend of a rebuilt encoder.
        strict_load: fail on any missing / unexpected encoder key.
        **kwargs: optimizer and schedule settings of :class:`PretrainModule`.
    """

    def __init__(
        self,
        init_from: str | None = None,
        encoder: ViTEncoder | None = None,
        num_classes: int | None = None,
        img_size: int | None = None,
        pool: Pool = "cls",
        drop_path_rate: float | None = None,
        attn_backend: str | None = None,
        strict_load: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.init_from = init_from
        self.pool = pool
        self.num_classes = num_classes
        self.load_report: LoadResult | None = None
        self.source_meta: dict[str, Any] = {}
        if encoder is None:
            if init_from is None:
                raise ConfigError(
                    "give model.init_from (a pretrained checkpoint) or model.encoder "
                    "(an explicit ViTEncoder), or both"
                )
            raw = read_checkpoint(init_from)
            self.source_meta = dict(raw.meta)
            encoder = build_encoder(
                raw.meta,
                raw.path,
                img_size=img_size,
                drop_path_rate=drop_path_rate,
                attn_backend=attn_backend,
                init="timm",
            )
            self.load_report = load_encoder_state(encoder, raw, strict=strict_load)
        else:
            if drop_path_rate is not None or attn_backend is not None:
                raise ConfigError(
                    "drop_path_rate / attn_backend apply to an encoder rebuilt from init_from; "
                    "with an explicit model.encoder set them in its init_args"
                )
            size = encoder.patch_embed.img_size
            if img_size is not None and tuple(size) != (img_size, img_size):
                raise ConfigError(
                    f"the encoder is built for {size[0]}x{size[1]} images but the data gives "
                    f"{img_size}x{img_size}; set model.encoder.init_args.img_size: {img_size} "
                    "(the position embedding is resampled when loading)"
                )
            if init_from is not None:
                raw = read_checkpoint(init_from)
                self.source_meta = dict(raw.meta)
                self.load_report = load_encoder_state(encoder, raw, strict=strict_load)
        if self.load_report is not None:
            report = self.load_report
            rank_zero_info(
                f"loaded encoder from {init_from} ({report.format}): missing {report.missing}, "
                f"unexpected {report.unexpected}, ignored {len(report.ignored)} decoder/head "
                f"keys, resampled {report.resampled}"
            )
        self.encoder = encoder
        self._checked: set[str] = set()
        if num_classes is not None:
            self._build(num_classes)

    # ----- extension points -----------------------------------------------------------

    def build_head(self, num_classes: int) -> None:
        """Creates the classification head for ``num_classes``."""
        raise NotImplementedError

    def forward(self, pixels: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, num_classes)`` logits."""
        raise NotImplementedError

    def loss(self, logits: Tensor, batch: dict[str, Any]) -> Tensor:
        """Training loss (cross-entropy by default)."""
        return F.cross_entropy(logits.float(), batch["label"])

    def features(self, pixels: Tensor) -> Tensor:
        """Pooled encoder features ``(B, D)``."""
        return pool_tokens(self.encoder(pixels), self.pool, self.encoder.num_prefix_tokens)

    # ----- head, classes and checks -----------------------------------------------------

    def _build(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.build_head(num_classes)
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for stage in ("val", "test")
                for name, k in (("acc1", 1), ("acc5", top5))
            }
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        data_classes = getattr(datamodule, "num_classes", None)
        if self.num_classes is None:
            if data_classes is None:
                raise ConfigError(
                    "the number of classes is unknown: the data module does not say it; "
                    "set model.num_classes (or the data's num_classes)"
                )
            self._build(int(data_classes))
        elif data_classes is not None and int(data_classes) != self.num_classes:
            raise ConfigError(
                f"model.num_classes={self.num_classes} but the data has {data_classes} classes; "
                f"set model.num_classes: {data_classes} or leave it out to take the data's"
            )
        data_size = getattr(datamodule, "img_size", None)
        size = tuple(self.encoder.patch_embed.img_size)
        if data_size is not None and (data_size, data_size) != size:
            raise ConfigError(
                f"the data gives {data_size}x{data_size} images but the encoder expects "
                f"{size[0]}x{size[1]}; set model.img_size (or the encoder's img_size) to "
                f"{data_size}"
            )

    def check_batch(self, batch: dict[str, Any], stage: str) -> None:
        """One clear error (first batch of each stage) for images or labels that do not fit."""
        if stage in self._checked:
            return
        check_pixels(batch["pixels"], self.encoder)
        labels = batch.get("label")
        if labels is None:
            raise ConfigError("the data has no labels ('label' key); evaluation needs labels")
        if labels.numel() and (int(labels.max()) >= self.num_classes or int(labels.min()) < 0):
            raise ConfigError(
                f"labels up to {int(labels.max())} do not fit num_classes={self.num_classes}; "
                "set model.num_classes to the data's number of classes"
            )
        self._checked.add(stage)

    # ----- steps ------------------------------------------------------------------------

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        self.check_batch(batch, "train")
        return {"loss": self.loss(self(batch["pixels"]), batch)}

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        self.check_batch(batch, stage)
        logits = self(batch["pixels"])
        labels = batch["label"]
        batch_size = labels.shape[0]
        loss = F.cross_entropy(logits.float(), labels)
        self.log(f"{stage}/loss", loss, batch_size=batch_size, sync_dist=True)
        for name in ("acc1", "acc5"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, labels)
            self.log(f"{stage}/{name}", metric, batch_size=batch_size, prog_bar=name == "acc1")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def checkpoint_metadata(self) -> dict[str, Any]:
        meta = super().checkpoint_metadata()
        meta.update(num_classes=self.num_classes, pool=self.pool, init_from=self.init_from)
        for key in ("mean", "std"):  # the pretraining data's, when this data does not say
            value = self.source_meta.get(key)
            if key not in meta and value is not None:
                meta[key] = [float(v) for v in value]
        return meta
