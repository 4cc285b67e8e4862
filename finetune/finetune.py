"""End-to-end fine-tuning of a pretrained encoder, MAE's recipe (He et al. 2022, A.2)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer

from .base import ClassifierModule
from .checkpoint import pooled_norm_config
from .features import ConfigError, Pool, pool_tokens

__all__ = ["FineTune", "default_finetune_adamw"]


MAE_FINETUNE_DROP_PATH = 0.1


def default_finetune_adamw(params: Iterable[Any]) -> Optimizer:
    """AdamW with MAE's default fine-tuning settings (base lr 1e-3 per 256).

    The paper's Table 9 and the defaults of facebookresearch/mae ``main_finetune.py``
    (``--blr 1e-3``); its FINETUNE.md uses 5e-4 for ViT-B (the ViT-B recipe does). The
    weight decay (0.05) is :class:`FineTune`'s ``weight_decay``, set per layer group.
    """
    return AdamW(params, lr=1e-3, betas=(0.9, 0.999))


def check_optimizer_weight_decay(optimizer: Optimizer, weight_decay: float) -> None:
    """Refuses an optimizer whose own ``weight_decay`` was set to a value the layer groups
    override (``--model.optimizer.init_args.weight_decay``, MAE's ``--weight_decay``).

    Its class default (AdamW: 0.01) counts as unset.
    """
    own = optimizer.defaults.get("weight_decay")
    if own is None or own == weight_decay:
        return
    parameter = inspect.signature(type(optimizer)).parameters.get("weight_decay")
    if parameter is not None and parameter.default == own:
        return
    raise ConfigError(
        f"the optimizer's weight_decay={own} is not used: fine-tuning sets the weight decay "
        f"per layer group from model.weight_decay ({weight_decay}); set "
        f"--model.weight_decay {own} instead"
    )


class FineTune(ClassifierModule):
    """Fine-tunes the whole encoder with a linear head.

    The encoder is the one :class:`~mimkit.pretrain.ViTEncoder` (no second copy): with
    ``pool="avg"`` its final norm is replaced by an identity and a fresh ``fc_norm``
    LayerNorm follows the mean of the patch tokens (MAE's global pooling, timm's
    ``global_pool="avg"`` layout); with ``pool="cls"`` the class token after the final norm
    feeds the head. The state dict is thus timm's ``encoder.*`` + ``fc_norm.*`` + ``head.*``,
    and the checkpoint metadata describes that layout (:func:`pooled_norm_config`), so the
    loaders rebuild the fine-tuned feature extractor exactly (``mimkit knn``, probes,
    ``mimkit export``). An encoder that already has an ``fc_norm`` (rebuilt from such a
    checkpoint) keeps it as this module's ``fc_norm``.

    Defaults follow the MAE paper's Table 9 (base lr 1e-3 per 256, layer decay 0.75,
    weight decay 0.05, 5 warmup epochs, mixup 0.8, cutmix 1.0, label smoothing 0.1); base
    lr, layer decay and weight decay are also the defaults of facebookresearch/mae
    ``main_finetune.py``, whose FINETUNE.md tunes ViT-B to base lr 5e-4 and layer decay
    0.65 (``recipes/finetune/vit_base_patch16_in1k.yaml``). Drop path (0.1 in both) is the
    encoder's: ``drop_path_rate`` for one rebuilt from a checkpoint (0.1 unless set), its
    ``init_args`` otherwise. The optimizer's own ``weight_decay`` is not used: the layer
    groups carry ``weight_decay``, and an optimizer set to another value is refused.

    Layer-wise lr decay uses timm's ``param_groups_layer_decay`` with the grouping of timm's
    ViT (embeddings = layer 0, block ``i`` = layer ``i + 1``, final norm and head last), and
    no weight decay on 1-D parameters, the position embedding and the tokens.

    Args:
        optimizer: AdamW, base lr 1e-3 per 256 samples by default.
        layer_decay: lr of layer ``l`` is scaled by ``layer_decay ** (L + 1 - l)`` (0.75).
        weight_decay: weight decay of the ≥2-D weights (passed to the param groups).
        mixup_alpha: mixup alpha (0 disables).
        cutmix_alpha: cutmix alpha (0 disables).
        mixup_prob: probability of mixing a batch.
        mixup_switch_prob: probability of cutmix instead of mixup when both are on.
        label_smoothing: smoothing of the (mixed) targets.
        head_init_std: std of the head's truncated normal init (MAE: 2e-5).
        train_pos_embed: learn the position embedding (MAE fine-tunes it); ``False`` keeps
            the encoder's own setting (a fixed sin-cos table stays fixed, as in VideoMAE's
            fine-tuning).
        ema_decay: keep a timm ``ModelEmaV3`` of encoder + head with this decay and
            also report its validation accuracy (``None``: no EMA).
        warmup_epochs: 5 in MAE's recipe.
        pool: ``avg`` (MAE's fine-tuning default) or ``cls``.
        drop_path_rate: stochastic depth of an encoder rebuilt from ``init_from``;
            ``None`` gives MAE's 0.1 (``main_finetune.py``'s default). An explicit
            ``model.encoder`` sets its own in ``init_args``.
        **kwargs: encoder, checkpoint, class and schedule settings of
            :class:`~mimkit.finetune.ClassifierModule`.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = default_finetune_adamw,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        head_init_std: float = 2e-5,
        train_pos_embed: bool = True,
        ema_decay: float | None = None,
        warmup_epochs: float = 5.0,
        pool: Pool = "avg",
        drop_path_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        # plain settings first: the base builds the head (and Mixup) when num_classes is known
        self.head_init_std = head_init_std
        self.layer_decay = layer_decay
        self.weight_decay = weight_decay
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.mixup_prob = mixup_prob
        self.mixup_switch_prob = mixup_switch_prob
        self.label_smoothing = label_smoothing
        self.ema_decay = ema_decay
        self.mixup: Mixup | None = None
        if drop_path_rate is None and kwargs.get("encoder") is None:
            drop_path_rate = MAE_FINETUNE_DROP_PATH
        super().__init__(
            optimizer=optimizer,
            warmup_epochs=warmup_epochs,
            pool=pool,
            drop_path_rate=drop_path_rate,
            **kwargs,
        )
        if train_pos_embed and self.encoder.pos_embed is not None:
            self.encoder.pos_embed.requires_grad_(True)
        self.fc_norm = self._take_pooled_norm(pool)

    def _take_pooled_norm(self, pool: Pool) -> nn.Module:
        """The norm after pooling: the encoder's own ``fc_norm`` when it has one, else a
        fresh LayerNorm for ``avg`` (whose tokens then get no final norm) or an identity."""
        pooled_norm = getattr(self.encoder, "fc_norm", None)
        self.encoder.fc_norm = nn.Identity()  # applied here, after pooling, not twice
        if pooled_norm is not None and not isinstance(pooled_norm, nn.Identity):
            return pooled_norm
        if pool == "avg":
            self.encoder.norm = nn.Identity()
            return nn.LayerNorm(self.encoder.num_features, eps=1e-6)
        return nn.Identity()

    def checkpoint_metadata(self) -> dict[str, Any]:
        """The base's metadata, with the encoder described as the feature extractor it is
        here: no final token norm when ``fc_norm`` follows the pooling."""
        meta = super().checkpoint_metadata()
        if not isinstance(self.fc_norm, nn.Identity) and "encoder" in meta:
            meta["encoder"] = pooled_norm_config(meta["encoder"], self.pool)
            meta["timm_kwargs"] = {
                **meta.get("timm_kwargs", {}),
                **meta["encoder"]["model_kwargs"],
            }
        return meta

    def build_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.encoder.num_features, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=self.head_init_std)
        nn.init.zeros_(self.head.bias)

    def _build(self, num_classes: int) -> None:
        super()._build(num_classes)
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=self.mixup_alpha,
                cutmix_alpha=self.cutmix_alpha,
                prob=self.mixup_prob,
                switch_prob=self.mixup_switch_prob,
                label_smoothing=self.label_smoothing,
                num_classes=num_classes,
            )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.ema_decay is not None and not hasattr(self, "ema"):
            self.ema = ModelEmaV3(self._parts(), decay=self.ema_decay)
            self.ema.requires_grad_(False)
            for name in ("acc1", "acc5"):
                self.metrics[f"val_ema_{name}"] = self.metrics[f"val_{name}"].clone()

    def _parts(self) -> nn.ModuleDict:
        """The classifier's modules, in one container for the EMA (no copy)."""
        return nn.ModuleDict({"encoder": self.encoder, "fc_norm": self.fc_norm, "head": self.head})

    def logits(self, pixels: Tensor, parts: nn.ModuleDict | None = None) -> Tensor:
        encoder = self.encoder if parts is None else parts["encoder"]
        fc_norm = self.fc_norm if parts is None else parts["fc_norm"]
        head = self.head if parts is None else parts["head"]
        feats = pool_tokens(encoder(pixels), self.pool, encoder.num_prefix_tokens)
        return head(fc_norm(feats))

    def forward(self, pixels: Tensor) -> Tensor:
        return self.logits(pixels)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's ViT grouping under the ``encoder.`` prefix.

        Embeddings are layer 0 and block ``i`` layer ``i + 1``; the final norm, ``fc_norm``
        and the head match nothing, which timm maps to one last layer (scale 1), as in MAE.
        """
        return {
            "stem": r"^encoder\.(?:cls_token|reg_token|pos_embed|patch_embed|norm_pre)",
            "blocks": [(r"^encoder\.blocks\.(\d+)", None)],
        }

    def configure_optimizers(self) -> dict[str, Any]:
        config = super().configure_optimizers()
        check_optimizer_weight_decay(config["optimizer"], self.weight_decay)
        return config

    def param_groups(self) -> list[dict[str, Any]]:
        no_decay = [f"encoder.{name}" for name in ("pos_embed", "cls_token", "reg_token")]
        ema = getattr(self, "ema", None)
        if ema is not None:
            ema.requires_grad_(False)
        return param_groups_layer_decay(
            self,
            weight_decay=self.weight_decay,
            no_weight_decay_list=no_decay,
            layer_decay=self.layer_decay,
        )

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        self.check_batch(batch, "train")
        pixels, labels = batch["pixels"], batch["label"]
        if self.mixup is not None:
            if pixels.shape[0] % 2:
                raise ValueError("mixup/cutmix needs an even batch size")
            if pixels.ndim == 5:  # clips: one mixup / cutmix box for all frames
                batch_size, chans, frames, height, width = pixels.shape
                mixed, targets = self.mixup(pixels.reshape(batch_size, -1, height, width), labels)
                pixels = mixed.view(batch_size, chans, frames, height, width)
            else:
                pixels, targets = self.mixup(pixels, labels)
            loss = SoftTargetCrossEntropy()(self(pixels).float(), targets)
        else:
            loss = F.cross_entropy(
                self(pixels).float(), labels, label_smoothing=self.label_smoothing
            )
        return {"loss": loss}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        ema = getattr(self, "ema", None)
        if ema is not None and self.optimizer_stepped:
            ema.update(self._parts(), step=self.global_step)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        ema = getattr(self, "ema", None)
        if ema is not None and len(batch["pixels"]):  # an all-unreadable batch comes empty
            logits = self.predict(batch["pixels"], lambda x: self.logits(x, ema.module))
            for name in ("acc1", "acc5"):
                metric = self.metrics[f"val_ema_{name}"]
                metric(logits, batch["label"])
                self.log(f"val/ema_{name}", metric, batch_size=batch["label"].shape[0])
