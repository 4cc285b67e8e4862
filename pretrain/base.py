"""The shared base of every pretraining method: optimizer, schedule, logging, EMA."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .attention import prepare_attention
from .errors import ConfigError
from .fsdp import SHARDED_STRATEGIES
from .nonfinite import NonfiniteGuard, accepts_found_inf
from .step_rng import seed_step, step_seed

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

__all__ = [
    "PretrainModule",
    "default_adamw",
    "warmup_cosine",
    "momentum_at",
    "ema_update",
    "weight_decay_groups",
    "canonical_name",
]

log = logging.getLogger(__name__)


def default_adamw(params: Iterable[Any]) -> Optimizer:
    """Fused AdamW with MAE's pretraining settings (base lr 1.5e-4 per 256 samples)."""
    return AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)


WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """A parameter name without the prefixes FSDP, checkpoint wrappers or compile insert."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def is_decayed(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to matrices and kernels, not to 1-D params, positions or tokens."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim >= 2 and "pos_embed" not in leaf and "token" not in leaf


def weight_decay_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], decayed_names: set[str] | None = None
) -> list[dict[str, Any]]:
    """Splits trainable parameters into a decayed and a non-decayed group.

    No weight decay for 1-D parameters (norms, biases), position embeddings and
    learned tokens (class, register, mask tokens), as VideoMAE, CMAE and timm's
    ``no_weight_decay`` lists do. MAE's, CAE's and ViC-MAE's official code skip only 1-D
    parameters and so decay their ``(1, 1, D)`` tokens: a few thousand values, left out here.

    Args:
        named_params: ``(name, parameter)`` pairs.
        decayed_names: names (without wrapper prefixes) to decay, recorded before the
            model was sharded; needed under FSDP, where parameters are flat views.
    """
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if decayed_names is None:
            decayed = is_decayed(name, param)
        else:
            decayed = canonical_name(name) in decayed_names
        (decay if decayed else no_decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warmup from 0, then half-cosine to ``min_ratio``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def momentum_at(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """Cosine momentum schedule from ``start`` to ``end`` (BYOL, CMAE)."""
    progress = min(1.0, step / max(1, total_steps))
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for parameters and float buffers."""
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if target_params:
        torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        if t.dtype.is_floating_point:
            t.lerp_(o, 1.0 - momentum)
        else:
            t.copy_(o)


class PretrainModule(L.LightningModule):
    """Plumbing that every pretraining method shares.

    A method implements :meth:`compute_loss`, returning a dict with a scalar
    ``"loss"`` and any other scalars to log; the base owns the rest.

    Args:
        optimizer: builds the optimizer from parameter groups; its ``lr`` is the
            base learning rate per 256 samples.
        lr_scheduler: optional scheduler factory; ``None`` gives per-step linear
            warmup then cosine decay.
        scale_lr: ``lr = base_lr * effective_batch / 256`` with the effective batch
            ``batch x devices x nodes x accumulation`` taken from the trainer.
        warmup_epochs: warmup length in epochs (fractions allowed).
        warmup_steps: warmup length in optimizer steps; overrides ``warmup_epochs``.
        min_lr_ratio: final learning rate as a fraction of the peak.
        max_nonfinite_steps: consecutive steps with a NaN/inf loss tolerated (each
            skipped) before training stops with an error.
        nonfinite_check: how a NaN/inf step is found and skipped. ``host`` reads the
            loss on the host every step (one device sync per step). ``device`` keeps
            the check on the device: the gradients' total norm and the loss give a
            flag that the fused optimizer's ``found_inf`` input uses to skip the
            update, and the host reads the streak only every ``nonfinite_check_every``
            steps. ``auto`` picks ``device`` for an optimizer that accepts ``found_inf``
            (``fused=True`` Adam/AdamW/SGD) when no fp16 gradient scaler owns it.
        nonfinite_check_every: optimizer steps between host reads in ``device`` mode.
        ema_momentum: start of the cosine momentum schedule for ``momentum_pairs``.
        ema_momentum_end: end of that schedule.
        compile_modules: ``torch.compile`` the modules named by ``compile_targets()``
            (static shapes: the number of visible tokens is fixed per configuration).
        compile_mode: ``torch.compile``'s ``mode`` for those modules, e.g.
            ``max-autotune-no-cudagraphs`` to let Inductor tune its matmul and fused kernels
            on the GPU (longer compile).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = default_adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        scale_lr: bool = True,
        warmup_epochs: float = 0.0,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        max_nonfinite_steps: int = 20,
        nonfinite_check: Literal["auto", "host", "device"] = "auto",
        nonfinite_check_every: int = 50,
        ema_momentum: float = 0.996,
        ema_momentum_end: float = 1.0,
        compile_modules: bool = False,
        compile_mode: CompileMode = "default",
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scale_lr = scale_lr
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.max_nonfinite_steps = max_nonfinite_steps
        self.ema_momentum = ema_momentum
        self.ema_momentum_end = ema_momentum_end
        self.compile_modules = compile_modules
        if compile_mode not in get_args(CompileMode):
            raise ValueError(
                f"compile_mode must be one of {', '.join(get_args(CompileMode))}, got {compile_mode!r}"
            )
        self.compile_mode = compile_mode
        if nonfinite_check not in ("auto", "host", "device"):
            raise ValueError(
                f"nonfinite_check must be 'auto', 'host' or 'device', got {nonfinite_check!r}"
            )
        if nonfinite_check_every < 1:
            raise ValueError(f"nonfinite_check_every must be >= 1, got {nonfinite_check_every}")
        self.nonfinite_check = nonfinite_check
        self.nonfinite_check_every = nonfinite_check_every
        self.nonfinite_streak = 0
        self.skipped_steps = 0
        self.nonfinite_guard: NonfiniteGuard | None = None
        self._drop_update = False  # host check: a NaN/inf loss in this accumulation window
        self.optimizer_stepped = False  # in on_train_batch_end: did this batch end a step?
        # the seed_everything seed (every rank's), mixed with rank and step in each batch
        self.run_seed = torch.initial_seed()
        self._step_at_batch_start, self._micro_batch = -1, 0
        self.decayed_names: set[str] | None = None

    # ----- extension points -----------------------------------------------------

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Returns ``{"loss": scalar, ...}`` for a batch.

        Args:
            batch: the data contract's dict (``pixels``, maybe ``label`` / ``views``).
            generator: seeded generator for masks (validation uses a fixed one).
        """
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` module pairs updated by EMA after every optimizer step."""
        return []

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters the optimizer updates (momentum targets are excluded by ``requires_grad``)."""
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a later loader needs to rebuild the encoder (stored under ``"mimkit"``).

        The method's name and, for a method with an ``encoder`` (a ``ViTEncoder``), its
        config, timm name and keyword arguments, and the data's normalization mean/std.
        """
        meta: dict[str, Any] = {"method": type(self).__name__}
        encoder = getattr(self, "encoder", None)
        if hasattr(encoder, "config"):
            meta["encoder"] = dict(encoder.config)
            meta["timm_name"] = encoder.timm_name
            meta["timm_kwargs"] = dict(encoder.timm_kwargs)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        for key in ("mean", "std"):
            value = getattr(datamodule, key, None)
            if value is not None:
                meta[key] = [float(v) for v in value]
        return meta

    def compile_targets(self) -> list[str]:
        """Names of the submodules compiled when ``compile_modules`` is set."""
        return [
            name
            for name in ("encoder", "decoder")
            if isinstance(getattr(self, name, None), nn.Module)
        ]

    # ----- setup --------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if stage == "fit" and self.momentum_pairs() and isinstance(strategy, SHARDED_STRATEGIES):
            raise ConfigError(
                f"{type(self).__name__} keeps momentum (EMA) copies of its modules, whose "
                f"update needs whole parameters; {type(strategy).__name__} shards them. "
                "Use --trainer.strategy ddp (with activation checkpointing for memory)"
            )
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None) or {}
        if (
            stage == "fit"
            and ddp_kwargs.get("static_graph")
            and self.trainer.accumulate_grad_batches > 1
        ):
            raise ConfigError(
                "DDP static_graph=True with accumulate_grad_batches > 1 fails in PyTorch's "
                "reducer at the first backward (pytorch/pytorch#143580: no_sync under a static "
                "graph); drop static_graph or accumulate 1 batch"
            )
        # Recorded before any strategy wraps or shards the parameters.
        self.decayed_names = {
            canonical_name(n) for n, p in self.named_trainable_parameters() if is_decayed(n, p)
        }

    def on_fit_start(self) -> None:
        if not self.compile_modules:
            return
        precision = str(self.trainer.precision)
        dtype = (
            torch.bfloat16
            if "bf16" in precision
            else torch.float16
            if "16" in precision
            else torch.float32
        )
        for name in self.compile_targets():
            module = getattr(self, name)
            prepare_attention(module, self.device, dtype)
            module.compile(dynamic=False, mode=self.compile_mode)
        rank_zero_info(f"torch.compile ({self.compile_mode}): {', '.join(self.compile_targets())}")

    # ----- batch size and learning rate -------------------------------------------

    def per_device_batch_size(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        size = getattr(datamodule, "batch_size", None)
        if size is None:
            loader = self.trainer.train_dataloader
            size = getattr(loader, "batch_size", None)
        if not size:
            raise RuntimeError(
                "cannot read the batch size from the datamodule or train dataloader; "
                "set scale_lr=False or give the datamodule a `batch_size` attribute"
            )
        return int(size)

    def samples_per_input(self) -> int:
        """Training samples made from one loaded input (``mask_repeats`` in MAE, the
        ``repeat_aug`` clips of a video): what the model's memory and FLOPs scale with."""
        return 1

    def effective_batch_size(self) -> int:
        """Loaded inputs per optimizer step: ``batch x devices x nodes x accumulation``.

        Repeats drawn from one input (:meth:`samples_per_input`) are not counted, as in
        MAE-ST's official code, whose lr rule counts videos, not their repeated clips.
        """
        trainer = self.trainer
        return self.per_device_batch_size() * trainer.world_size * trainer.accumulate_grad_batches

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups; a group's ``lr_scale`` key multiplies its lr."""
        return weight_decay_groups(self.named_trainable_parameters(), self.decayed_names)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.param_groups())
        total_steps = int(self.trainer.estimated_stepping_batches)
        factor = 1.0
        if self.scale_lr:
            effective = self.effective_batch_size()
            factor = effective / 256
            rank_zero_info(
                f"effective batch {effective} = {self.per_device_batch_size()} per device x "
                f"{self.trainer.world_size} devices x {self.trainer.accumulate_grad_batches} "
                f"accumulation (not counting {self.samples_per_input()} repeats per input); "
                f"lr = base_lr x {effective}/256 = "
                f"{optimizer.defaults['lr'] * factor:.3g}"
            )
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor * group.get("lr_scale", 1.0)
        if self.lr_scheduler_factory is not None:
            scheduler = self.lr_scheduler_factory(optimizer)
        else:
            warmup = self.resolve_warmup_steps(total_steps)
            scheduler = LambdaLR(
                optimizer,
                lambda step: warmup_cosine(step, warmup, total_steps, self.min_lr_ratio),
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def resolve_warmup_steps(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_epochs <= 0:
            return 0
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs <= 0:
            raise ConfigError(
                "model.warmup_epochs needs trainer.max_epochs; set model.warmup_steps instead"
            )
        return int(round(self.warmup_epochs * total_steps / max_epochs))

    # ----- steps ------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._step_at_batch_start = -1
        self.nonfinite_guard = None
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        usable = (
            optimizer is not None
            and accepts_found_inf(optimizer)
            and scaler is None
            and len(self.trainer.optimizers) == 1
        )
        if self.nonfinite_check == "device" and not usable:
            raise ConfigError(
                "nonfinite_check='device' needs one optimizer that accepts `found_inf` "
                "(torch.optim.AdamW/Adam/SGD with fused=True) and no fp16 gradient scaler; "
                "use nonfinite_check='host' or 'auto'"
            )
        if self.nonfinite_check != "host" and usable:
            self.nonfinite_guard = NonfiniteGuard(self.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step = self.trainer.global_step
        if step != self._step_at_batch_start:
            self._step_at_batch_start, self._micro_batch = step, 0
        else:
            self._micro_batch += 1
        seed_step(step_seed(self.run_seed, self.global_rank, step, self._micro_batch))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        outputs = self.compute_loss(batch)
        loss = outputs["loss"]
        if self.nonfinite_guard is not None:
            self.nonfinite_guard.observe_loss(loss)
        elif not self._loss_is_finite(loss):
            # Backward still runs, on every rank alike (Lightning refuses a None step under
            # DDP); on_before_optimizer_step then drops the whole accumulated update.
            self._drop_update = True
            return loss
        batch_size = _batch_size(batch)
        for name, value in outputs.items():
            self.log(
                f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=batch_size
            )
        return loss

    def _loss_is_finite(self, loss: Tensor) -> bool:
        """Host check: syncs, counts the streak, and raises once it is too long."""
        finite = bool(torch.isfinite(loss.detach()).all())
        finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.nonfinite_streak = 0
            return True
        self.nonfinite_streak += 1
        self.skipped_steps += 1
        self.log("train/nonfinite_streak", float(self.nonfinite_streak))
        rank_zero_warn(
            f"non-finite loss at step {self.global_step}: step skipped "
            f"({self.nonfinite_streak}/{self.max_nonfinite_steps} in a row)"
        )
        self._stop_if_too_many(self.nonfinite_streak)
        return False

    def _stop_if_too_many(self, streak: int) -> None:
        if streak >= self.max_nonfinite_steps:
            raise RuntimeError(
                f"the loss was NaN/inf for {streak} consecutive steps "
                f"(max_nonfinite_steps={self.max_nonfinite_steps}), last at step "
                f"{self.global_step}. Lower the learning rate, use bf16 instead of fp16, "
                "or check the data for broken inputs."
            )

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self.nonfinite_guard is not None:
            self.nonfinite_guard.before_step(getattr(optimizer, "_optimizer", optimizer))
        if self._drop_update:
            # torch optimizers pass over parameters without a gradient: no moment, weight
            # decay or step count changes (an fp16 scaler has already seen the inf and skips)
            optimizer.zero_grad(set_to_none=True)
            self._drop_update = False

    def _read_nonfinite_guard(self) -> None:
        """Device mode: one host read of the streak counters."""
        worst, skipped = self.nonfinite_guard.read()
        if skipped > self.skipped_steps:
            rank_zero_warn(
                f"{skipped - self.skipped_steps} non-finite step(s) skipped before step "
                f"{self.global_step} ({skipped} in total)"
            )
            self.log("train/skipped_steps", float(skipped))
        self.skipped_steps = skipped
        self._stop_if_too_many(worst)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        outputs = self.compute_loss(batch, generator=generator)
        batch_size = _batch_size(batch)
        for name, value in outputs.items():
            self.log(
                f"val/{name}", value, prog_bar=name == "loss", batch_size=batch_size, sync_dist=True
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Once per optimizer step, including the shorter accumulation window Lightning
        # closes at the end of an epoch: the step counter tells, not the batch index.
        self.optimizer_stepped = self.trainer.global_step != self._step_at_batch_start
        if not self.optimizer_stepped:
            return
        if self.nonfinite_guard is not None and self.global_step % self.nonfinite_check_every == 0:
            self._read_nonfinite_guard()
        pairs = self.momentum_pairs()
        if not pairs:
            return
        momentum = self.current_momentum()
        for online, target in pairs:
            ema_update(online, target, momentum)
        self.log("train/ema_momentum", momentum)

    def on_train_epoch_end(self) -> None:
        if self.nonfinite_guard is not None:
            self._read_nonfinite_guard()

    def current_momentum(self) -> float:
        """Momentum of the EMA update that follows optimizer step ``global_step - 1``."""
        total = int(self.trainer.estimated_stepping_batches)
        step = max(0, self.global_step - 1)
        return momentum_at(step, total, self.ema_momentum, self.ema_momentum_end)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mimkit"] = self.checkpoint_metadata()
        checkpoint["mimkit_run_seed"] = self.run_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_seed = int(checkpoint.get("mimkit_run_seed", self.run_seed))


def _batch_size(batch: dict[str, Any]) -> int:
    pixels = batch.get("pixels")
    if pixels is None and "views" in batch:
        pixels = batch["views"][0]
    return int(pixels.shape[0]) if pixels is not None else 1
