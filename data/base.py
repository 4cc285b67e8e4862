"""Shared LightningDataModule base: dataloaders, skip-safe collation and skipped-sample counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, XLAStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .collate import NUM_SKIPPED, SKIPPED_PATHS, SkipBadSamples, collate_skipping
from .device_decode import ENCODED
from .errors import DataConfigError
from .sampler import ResumableSampler, SeededSamples
from .views import ViewPair


class MimDataModule(L.LightningDataModule):
    """Base DataModule producing dict batches ``{"pixels", "label"?}``.

    Subclasses set ``self.train_dataset`` / ``self.val_dataset`` (map-style datasets returning
    a sample dict or ``None`` per index) in ``setup``. Every dataset is wrapped in
    :class:`~mimkit.data.collate.SkipBadSamples` and collated with
    :func:`~mimkit.data.collate.collate_skipping`, so an unreadable file never stops a run.
    The failure counts that travel in each batch are popped in :meth:`on_before_batch_transfer`
    (main process) into :attr:`skipped_samples` / :attr:`skipped_paths`, keyed by trainer stage
    (``"train"``, ``"validate"``, ``"sanity_check"``, ``"test"``, ``"predict"``, or
    ``"unknown"`` outside a trainer); :class:`~mimkit.data.report.ReportSkippedSamples`
    reports and resets them every epoch.

    Training batches come from a :class:`~mimkit.data.sampler.ResumableSampler` (a seeded
    permutation per epoch, split across ranks, with per-sample augmentation seeds), whose
    position is this module's :meth:`state_dict`: a run resumed from a mid-epoch checkpoint
    continues at the same batch, in the same order, with the same augmentations.

    Validation / test batches count every sample exactly once when the attached
    LightningModule says its evaluation allows it (``exact_eval = True``, the evaluation
    modules of :mod:`mimkit.finetune`): under DDP each rank reads an unpadded share
    (Lightning's ``UnrepeatedDistributedSampler``: no duplicates padding the last ranks,
    so each rank needs at least one sample) and an unreadable sample is dropped and
    counted, not replaced by another one. Otherwise (pretraining: contrastive losses
    gather across ranks at every step) Lightning's padded sampler and substitution apply.

    Note:
        Lightning calls only one ``on_before_batch_transfer``: when a LightningModule overrides
        it too, Lightning uses the module's and this one's bookkeeping does not run.

    Args:
        img_size: Side length ``S`` of the (square) output images.
        batch_size: Samples per batch (per device).
        num_workers: DataLoader worker processes; ``persistent_workers`` follows ``> 0``.
        pin_memory: Pin host memory (only used when CUDA is available).
        mean: Per-channel normalization mean, ``C`` floats.
        std: Per-channel normalization std, ``C`` floats.
        num_classes: Number of classes of a labeled source, ``None`` when unlabeled or unknown.
        views: Two-view augmentation (:mod:`mimkit.data.views`) for contrastive methods; when set,
            training samples carry ``"views": [v0, v1]`` and ``"pixels"`` is ``v0``.

    Attributes:
        channels: Channels ``C`` of ``"pixels"``.
        num_frames: Frames ``T`` of video clips, ``None`` for images.
        max_retries: Substitute reads tried after a failed sample.
        max_reported_paths: Bound on the example failing paths kept per stage.
        batch_decoder: ``(batch, device) -> batch`` for batches of encoded files (a
            ``"encoded"`` key), e.g. :class:`~mimkit.data.device_decode.DeviceDecodeCrop`.
    """

    channels: int = 3
    num_frames: int | None = None
    batch_decoder: Any = None
    max_retries: int = 10
    max_reported_paths: int = 5

    def __init__(
        self,
        img_size: int,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = True,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        num_classes: int | None = None,
        views: ViewPair | None = None,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = num_workers > 0
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self.num_classes = num_classes
        self.views = views
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.skipped_samples: dict[str, int] = {}
        self.skipped_paths: dict[str, list[str]] = {}
        self.train_sampler: ResumableSampler | None = None
        self._sampler_state: dict[str, int] | None = None
        self._sampler_batch = batch_size

    def preflight(self, stage: str | None = None, world_size: int = 1) -> None:
        """Cheap checks of the settings against the run, without reading any data.

        The CLI calls it before Lightning starts the other ranks, so that a wrong path or
        setting is one message at once, not one per process after all have started. Raises
        the ``FileNotFoundError`` that ``setup(stage)`` would for a missing local source, or
        a :class:`~mimkit.data.errors.DataConfigError`. Nothing to check here.

        Args:
            stage: Lightning stage, as for ``setup``.
            world_size: Processes of the run (devices x nodes).
        """

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            split = "train" if train else "validation"
            raise RuntimeError(f"{type(self).__name__} has no {split} dataset; call setup() first.")
        exact = not train and self._exact_eval()
        dataset = SkipBadSamples(dataset, max_retries=self.max_retries, drop=exact)
        sampler = None
        if train:
            sampler = self._make_train_sampler(dataset)
            dataset = SeededSamples(dataset)
        elif exact:
            sampler = self._eval_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            collate_fn=collate_skipping,
        )

    def _exact_eval(self) -> bool:
        """Whether the attached LightningModule evaluates each sample once (``exact_eval``)."""
        trainer = self.trainer
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        return bool(getattr(module, "exact_eval", False))

    def _eval_sampler(self, dataset: Dataset) -> DistributedSampler | None:
        """This rank's unpadded share of an evaluation split under DDP, else ``None``.

        Lightning leaves a ``DistributedSampler`` in place, so no padding duplicates are
        scored. Only for strategies whose eval forward makes no collective call (DDP; not
        FSDP, DeepSpeed or XLA, which would hang on uneven batch counts), and only when
        every rank gets a sample (else Lightning's padded sampler, with a warning).
        """
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        if world <= 1 or not isinstance(trainer.strategy, DDPStrategy):
            return None
        if isinstance(trainer.strategy, (DeepSpeedStrategy, XLAStrategy)):
            return None
        size = len(dataset)  # type: ignore[arg-type]
        if size < world:
            rank_zero_warn(
                f"{type(self).__name__}: {size} evaluation samples for {world} ranks; some "
                "rank would get none, so Lightning's DistributedSampler pads the split with "
                "repeated samples, which the metrics count"
            )
            return None
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=world, rank=trainer.global_rank, shuffle=False
        )

    def _make_train_sampler(
        self, dataset: Dataset, batch_size: int | None = None
    ) -> ResumableSampler:
        """The resumable training sampler (wrap ``dataset`` in ``SeededSamples`` to use it).

        Args:
            dataset: The training dataset (its length is used).
            batch_size: Dataset items per loader batch, when it is not ``self.batch_size``.
        """
        self._sampler_batch = batch_size or self.batch_size
        trainer = self.trainer
        state = self._sampler_state or {}
        seed = state.get("seed")
        if seed is None and self.train_sampler is not None:  # reloaded: keep the permutation
            seed = self.train_sampler.seed
        if seed is None:  # one draw from the global RNG, then kept in checkpoints
            seed = int(torch.randint(2**31 - 1, ()).item())
            if trainer is not None and trainer.world_size > 1:
                # every rank must split the same permutation, whatever its RNG holds
                seed = int(trainer.strategy.broadcast(seed, src=0))
        self.train_sampler = ResumableSampler(
            dataset,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=seed,
        )
        if state:
            self.train_sampler.load_state_dict(state)
        self._sampler_state = None
        per_rank = self.train_sampler.num_samples
        if per_rank < self._sampler_batch:
            ranks = self.train_sampler.num_replicas
            raise DataConfigError(
                f"{type(self).__name__} has {len(dataset)} training samples, {per_rank} per "  # type: ignore[arg-type]
                f"rank on {ranks} rank(s): fewer than one batch of {self._sampler_batch}, and "
                "the last incomplete batch is dropped, so an epoch would train on nothing; "
                "lower data.batch_size (or add data)"
            )
        return self.train_sampler

    def state_dict(self) -> dict[str, Any]:
        """The training data position ``{"sampler": {"seed", "epoch", "position"}}`` (or empty)."""
        sampler = self.train_sampler
        if sampler is None:
            return {}
        trainer = self.trainer
        limit = trainer.num_training_batches if trainer is not None else float("inf")
        epoch_done = sampler.consumed >= limit * self._sampler_batch
        return {"sampler": sampler.state_dict(epoch_done=epoch_done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training data position saved by :meth:`state_dict`."""
        self._sampler_state = state_dict.get("sampler")
        if self._sampler_state is not None and self.train_sampler is not None:
            self.train_sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; incomplete last batch dropped."""
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches in order; an empty list (no validation) when there is no split."""
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()

    def _stage(self) -> str:
        trainer = self.trainer
        stage = trainer.state.stage if trainer is not None else None
        return stage.value if stage is not None else "unknown"

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Pop the failure record of a batch (main process) and add it to the stage's count;
        decode an encoded batch on the model's device (:attr:`batch_decoder`).

        Args:
            batch: Collated batch dict; ``"num_skipped"`` and ``"skipped_paths"`` are removed.
            dataloader_idx: Index of the dataloader that produced the batch.

        Returns:
            The batch without the bookkeeping keys.
        """
        if isinstance(batch, dict):
            self.record_skipped(batch.pop(NUM_SKIPPED, 0), batch.pop(SKIPPED_PATHS, []))
            if self.batch_decoder is not None and ENCODED in batch:
                batch = self.batch_decoder(batch, self.device())
        if self.train_sampler is not None and self._stage() == "train":
            self.train_sampler.advance(self._sampler_batch)
        return batch

    def device(self) -> torch.device:
        """Where the trainer runs the model (the CPU without a trainer)."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def record_skipped(self, count: int, paths: Sequence[str], stage: str | None = None) -> None:
        """Add ``count`` skipped samples (and bounded example paths) to a stage's tally.

        Args:
            count: Number of failed sample reads.
            paths: Their file paths (or names).
            stage: Stage key; the trainer's current stage when ``None``.
        """
        stage = stage or self._stage()
        self.skipped_samples[stage] = self.skipped_samples.get(stage, 0) + int(count)
        examples = self.skipped_paths.setdefault(stage, [])
        for path in paths:
            if len(examples) >= self.max_reported_paths:
                break
            if path not in examples:
                examples.append(path)
