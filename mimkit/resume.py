"""Exact, preemption-safe resume: RNG state in checkpoints, atomic writes, save-and-requeue.

Three pieces, wired into every ``mimkit pretrain`` run by :mod:`mimkit.pretrain_cli`:

* :class:`RestoreRNG` saves the torch (CPU and CUDA), numpy and Python RNG states in the
  checkpoint and restores them when training starts again, after the sanity check and the
  data iterator creation, so the resumed run draws the same masks as an uninterrupted one.
  (The data order and augmentations are restored by the DataModule's resumable sampler.)
* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same folder,
  fsyncs it and renames it over the target: a kill mid-write never leaves a torn
  ``last.ckpt``.
* :class:`RequeueOnSignal` turns SIGUSR1 (SLURM's ``--signal=USR1@120`` warning, or
  ``scancel --signal=USR1``) and SIGTERM into: finish the current optimizer step, agree on
  all ranks, save ``last.ckpt``, ``scontrol requeue`` the job (rank 0, under SLURM) and exit
  (:class:`Preempted`; exiting at once keeps end-of-run hooks such as validation from
  running where an uninterrupted run would not).
  The requeued job runs the same command with ``--ckpt_path last`` and continues exactly.
  Lightning's own SLURM handler saves from inside the signal handler, i.e. possibly in the
  middle of a step and of a collective; this one saves only at a step boundary.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = [
    "AtomicCheckpointIO",
    "Preempted",
    "RequeueOnSignal",
    "RestoreRNG",
    "rng_state",
    "set_rng_state",
]

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """The process's RNG states as tensors and plain Python values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])


class RestoreRNG(Callback):
    """Saves the RNG states in checkpoints; restores them at the start of resumed training.

    Every rank restores the states rank 0 saved; runs seeded with ``seed_everything`` start
    all ranks from the same states anyway.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.tmp<pid>`` next to the target, fsync, then ``os.replace``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        target = Path(path)
        if "://" in str(path):  # remote filesystems: no rename semantics to rely on
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, temporary, storage_options)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            if temporary.exists():
                temporary.unlink()


class Preempted(SystemExit):
    """Raised on every rank after a signal-triggered save; code 0 when the job was requeued."""


def last_checkpoint_path(trainer: L.Trainer) -> str:
    """Where ``--ckpt_path last`` will look: ``<checkpoint dir>/last.ckpt``."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) or os.path.join(
        trainer.default_root_dir, "checkpoints"
    )
    return os.path.join(
        folder, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
    )


class RequeueOnSignal(Callback):
    """On a signal: save ``last.ckpt`` at the next step boundary, requeue the SLURM job, stop.

    Args:
        signals: Signal names to catch (``"SIGUSR1"``, ``"SIGTERM"``, ...).
        requeue: Run ``scontrol requeue $SLURM_JOB_ID`` on rank 0 when under SLURM.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGUSR1", "SIGTERM"), requeue: bool = True):
        self.signals = tuple(signals)
        self.requeue = requeue
        self.received: str | None = None
        self.saved_path: str | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Registered before the trainer's own handlers, so Lightning's SLURM auto-requeue
        # (which would save from inside the handler) sees SIGUSR1 taken and stays out.
        if stage != "fit" or os.name == "nt":
            return
        for name in self.signals:
            number = getattr(signal, name)
            try:
                self._previous[number] = signal.signal(number, self._on_signal)
            except ValueError:  # not the main thread
                return

    def _on_signal(self, number: int, frame: Any) -> None:
        self.received = signal.Signals(number).name

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches and not trainer.is_last_batch:
            return  # mid-accumulation: wait for the optimizer step
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        self.saved_path = last_checkpoint_path(trainer)
        rank_zero_info(
            f"{self.received or 'signal on another rank'}: saving {self.saved_path} at step "
            f"{trainer.global_step} and stopping"
        )
        for callback in trainer.checkpoint_callbacks:
            # the saved file is this callback's last checkpoint: after the resume it overwrites
            # it instead of starting a versioned ``last-v1.ckpt`` beside it
            if isinstance(callback, ModelCheckpoint) and callback.save_last:
                if os.path.dirname(self.saved_path) == str(callback.dirpath):
                    callback.last_model_path = self.saved_path
        trainer.save_checkpoint(self.saved_path)
        requeued = self._requeue() if trainer.is_global_zero else True
        raise Preempted(0 if requeued else 1)

    def _requeue(self) -> bool:
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = (
            f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
        )
        if not (self.requeue and job):
            return False
        # SLURM ends this job's processes right after the requeue, possibly before anything
        # printed later reaches the log: announce first.
        rank_zero_info(f"requeueing SLURM job {job}; it resumes from {self.saved_path}")
        sys.stdout.flush()
        sys.stderr.flush()
        result = subprocess.call(["scontrol", "requeue", job])
        if result == 0:
            return True
        rank_zero_warn(f"`scontrol requeue {job}` failed with exit code {result}")
        return False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}
