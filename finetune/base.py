"""The shared base of the supervised evaluations (fine-tuning, linear probing)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from mimkit.pretrain import PretrainModule, ViTEncoder

from .checkpoint import LoadResult, build_encoder, load_encoder_state, read_checkpoint
from .features import ConfigError, Pool, check_pixels, check_pool, pooled_features

__all__ = ["ClassifierModule", "ConfigError"]


class ClassifierModule(PretrainModule):
    """An encoder (loaded from a checkpoint) plus a classification head, on labeled data.

    Inherits the optimizer plumbing of :class:`~mimkit.pretrain.PretrainModule` (lr scaled
    by ``effective_batch / 256``, per-step warmup then cosine, NaN-step skipping). A
    subclass builds its head (:meth:`build_head`) and maps tokens to logits
    (:meth:`forward`); it may override :meth:`param_groups` (a group's ``lr_scale``
    multiplies its lr) and :meth:`loss`.

    Without ``init_from`` (and without a ``--ckpt_path`` to restore) the encoder keeps
    the weights it was built with, a random initialization for the recipes' explicit
    encoders: legitimate for a random-init baseline, so it is a warning, not an error.

    Attributes:
        exact_eval: tells mimkit's data modules to count every validation / test sample
            exactly once: under DDP each rank gets an unpadded share (no duplicates from
            Lightning's ``DistributedSampler``), and an unreadable sample is dropped and
            counted instead of replaced by another one. Safe because the eval steps make
            no per-step collective call (metrics and logged values sync at epoch end), so
            ranks may run different numbers of batches, as long as each runs one.

    Args:
        init_from: checkpoint to load the encoder from (any format
            :func:`~mimkit.finetune.read_checkpoint` accepts); ``None`` keeps the encoder's
            own initialization (a random-init baseline).
        encoder: the encoder; ``None`` rebuilds the one ``init_from`` describes.
        num_classes: classes of the head; ``None`` takes the data module's ``num_classes``.
        img_size: input resolution (linked from the data by the CLI); when rebuilding from
            a checkpoint the position embedding is resampled to it.
        num_frames: frames per clip of a rebuilt video encoder: another frame count than
            the checkpoint's resamples its position table, and an image checkpoint becomes
            a video encoder (tubelet kernel inflated over time). ``None`` keeps the
            checkpoint's (image, or its frame count).
        tubelet_size: frames per tubelet of a rebuilt video encoder (``None``: the
            checkpoint's, or 2 for an inflated image encoder).
        pool: ``cls`` (class token; an encoder without one is a :class:`ConfigError`) or
            ``avg`` (mean of patch tokens).
        drop_path_rate: stochastic depth of a rebuilt encoder.
        attn_backend: attention backend of a rebuilt encoder.
        strict_load: fail on any missing / unexpected encoder key.
        **kwargs: optimizer and schedule settings of :class:`PretrainModule`.
    """

    exact_eval: bool = True

    def __init__(
        self,
        init_from: str | None = None,
        encoder: ViTEncoder | None = None,
        num_classes: int | None = None,
        img_size: int | None = None,
        num_frames: int | None = None,
        tubelet_size: int | None = None,
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
                num_frames=num_frames,
                tubelet_size=tubelet_size,
                drop_path_rate=drop_path_rate,
                attn_backend=attn_backend,
                init="timm",
            )
            self.load_report = load_encoder_state(encoder, raw, strict=strict_load)
        else:
            if any(v is not None for v in (drop_path_rate, attn_backend, num_frames, tubelet_size)):
                raise ConfigError(
                    "drop_path_rate / attn_backend / num_frames / tubelet_size apply to an "
                    "encoder rebuilt from init_from; with an explicit model.encoder set them "
                    "in its init_args"
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
                f"keys, resampled {report.resampled}, kept the encoder's fixed {report.fixed}"
            )
        check_pool(pool, encoder)
        self.encoder = encoder
        self._checked: set[str] = set()
        self._warned_random = False
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

    def predict(self, pixels: Tensor, logits_fn: Any = None) -> Tensor:
        """Logits of a batch, or of a multi-view batch averaged per sample.

        Args:
            pixels: ``(B, C, H, W)`` images / ``(B, C, T, H, W)`` clips, or ``(B, V, ...)``
                with ``V`` views of each (multi-clip, multi-crop video testing).
            logits_fn: maps single-view pixels to logits (default: ``self``).

        Returns:
            ``(B, num_classes)``: the logits, or for ``V`` views the log of the mean of
            their softmax (so cross-entropy and top-k read it as logits), computed as
            ``logsumexp(log_softmax) - log V`` so that a class whose probability underflows
            in every view stays finite.
        """
        logits_fn = logits_fn or self
        single_ndim = 5 if self.encoder.is_video else 4
        if pixels.ndim != single_ndim + 1:
            return logits_fn(pixels)
        batch, views = pixels.shape[:2]
        logits = logits_fn(pixels.flatten(0, 1)).float().view(batch, views, -1)
        return torch.logsumexp(logits.log_softmax(dim=-1), dim=1) - math.log(views)

    def features(self, pixels: Tensor) -> Tensor:
        """Pooled encoder features ``(B, D)`` (through the encoder's ``fc_norm``, if any)."""
        return pooled_features(self.encoder(pixels), self.pool, self.encoder)

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
        data_frames = getattr(datamodule, "num_frames", None)
        if data_frames != self.encoder.num_frames:
            have = f"{data_frames}-frame clips" if data_frames else "images"
            want = f"{self.encoder.num_frames}-frame clips" if self.encoder.is_video else "images"
            raise ConfigError(
                f"the data gives {have} but the encoder expects {want}; set model.num_frames: "
                f"{data_frames} (a checkpoint's frame count, or an image checkpoint, is "
                "adapted when loading)"
                if data_frames
                else f"the data gives {have} but the encoder expects {want}; evaluate a video "
                "encoder on video data"
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
        pixels = batch["pixels"]
        if stage != "train" and pixels.ndim == (6 if self.encoder.is_video else 5):
            pixels = pixels[:, 0]  # multi-view evaluation
        check_pixels(pixels, self.encoder)
        labels = batch.get("label")
        if labels is None:
            raise ConfigError("the data has no labels ('label' key); evaluation needs labels")
        if labels.numel() and (int(labels.max()) >= self.num_classes or int(labels.min()) < 0):
            raise ConfigError(
                f"labels up to {int(labels.max())} do not fit num_classes={self.num_classes}; "
                "set model.num_classes to the data's number of classes"
            )
        self._checked.add(stage)

    def _warn_if_random_encoder(self) -> None:
        """Once: a rank-zero warning when nothing loaded pretrained weights into the encoder."""
        if self._warned_random or self.init_from is not None or self.trainer.ckpt_path:
            return
        self._warned_random = True
        rank_zero_warn(
            f"{type(self).__name__}: model.init_from is not set and no --ckpt_path is "
            "restored, so the encoder keeps the weights it was built with: for a recipe's "
            "model.encoder that is a RANDOM initialization, and this run evaluates a "
            "random-init baseline, not a pretrained encoder. Pass --model.init_from CKPT "
            "(a mimkit .ckpt, an export, or an MAE/VideoMAE/timm .pth) to load one."
        )

    def on_train_start(self) -> None:  # hooks that run after a --ckpt_path is restored
        super().on_train_start()
        self._warn_if_random_encoder()

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._warn_if_random_encoder()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._warn_if_random_encoder()

    # ----- steps ------------------------------------------------------------------------

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        self.check_batch(batch, "train")
        return {"loss": self.loss(self(batch["pixels"]), batch)}

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if not len(batch["pixels"]):  # every sample of the batch was unreadable (and dropped)
            return
        self.check_batch(batch, stage)
        logits = self.predict(batch["pixels"])
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
