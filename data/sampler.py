"""A seeded, resumable training sampler: exact data order and augmentations after a restart.

:class:`ResumableSampler` draws each epoch's permutation from ``seed + epoch`` (its own
generator, never the global RNG), splits it across ranks like ``DistributedSampler`` and can
start an epoch part-way through, at the sample where an interrupted run stopped. It yields
``(index, sample_seed)`` pairs; :class:`SeededSamples` runs each read with torch's CPU
generator seeded to ``sample_seed`` inside :func:`torch.random.fork_rng`, so random
augmentations are a function of ``(seed, epoch, index)`` alone: identical for any number of
workers, across prefetching, and after a resume, and the global RNG stream (masking, dropout)
is never touched by data loading.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset, DistributedSampler

_SEED_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Deterministic 63-bit seed of one sample read (a cheap integer hash of its inputs)."""
    value = (
        seed * 1_000_003 + epoch
    ) * 6_364_136_223_846_793_005 + index * 1_442_695_040_888_963_407
    return value & _SEED_MASK


class ResumableSampler(DistributedSampler):
    """Per-epoch seeded permutation, split across ranks, resumable mid-epoch.

    A subclass of ``DistributedSampler`` so that Lightning keeps it as is under DDP (and
    calls :meth:`set_epoch`). ``drop_last=True`` semantics: every rank gets
    ``len(dataset) // num_replicas`` samples per epoch.

    Args:
        dataset: Map-style dataset (only its length is used).
        num_replicas: World size.
        rank: This process's global rank.
        seed: Base seed of the permutations and of the per-sample augmentation seeds.
        shuffle: Permute each epoch; ``False`` keeps index order.

    Attributes:
        consumed: Samples (of this rank) of the current epoch that reached the model; the
            owner advances it with :meth:`advance`.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.consumed = 0
        self._start = 0

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        else:
            order = list(range(len(self.dataset)))  # type: ignore[arg-type]
        return order[: self.total_size][self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        start, self._start = self._start, 0
        self.consumed = start
        epoch = self.epoch
        for index in self._indices()[start:]:
            yield index, sample_seed(self.seed, epoch, index)

    def advance(self, samples: int) -> None:
        """Record that ``samples`` more samples of this epoch were used for training."""
        self.consumed += samples

    def state_dict(self, epoch_done: bool = False) -> dict[str, int]:
        """``{"seed", "epoch", "position", "num_replicas"}``; the next epoch at position 0 when
        ``epoch_done``. ``position`` counts this rank's samples of the epoch."""
        state = {"seed": self.seed, "num_replicas": self.num_replicas}
        if epoch_done or self.consumed >= self.num_samples:
            return {**state, "epoch": self.epoch + 1, "position": 0}
        return {**state, "epoch": self.epoch, "position": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restart at ``state``: the next iterator begins at its epoch and position.

        A position saved with another number of ranks is converted so that the samples the
        epoch has used in all keep their count: rank ``r`` of ``n`` reads the permutation's
        items ``r, r + n, ...``, so after ``p`` samples per rank on ``m`` ranks the first
        ``m * p`` items are used, and each of ``n`` ranks resumes at ``ceil(m * p / n)``: no
        sample is read twice, and fewer than ``n`` are left out of the epoch.
        """
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        saved_ranks = int(state.get("num_replicas", self.num_replicas))
        if saved_ranks != self.num_replicas and position:
            used = saved_ranks * position
            position = -(-used // self.num_replicas)
            rank_zero_warn(
                f"resuming mid-epoch on {self.num_replicas} rank(s) from a checkpoint saved on "
                f"{saved_ranks}: the epoch's first {used} samples count as used, and each rank "
                f"starts at its sample {position}; Lightning's batch count for the epoch is the "
                "saved one, so with more ranks this epoch ends early. The effective batch, "
                "hence the scaled learning rate, follows the new number of ranks unless "
                "trainer.accumulate_grad_batches makes up for it"
            )
        self._start = self.consumed = position


class SeededSamples(Dataset):
    """Reads ``dataset[index]`` under a per-sample seed given with the index.

    Args:
        dataset: Map-style dataset whose random transforms use torch's global RNG.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if isinstance(key, int):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torch.manual_seed would also queue a CUDA/XPU
            # reseed, recording a stack trace per sample (~0.3 ms) where CUDA is not
            # initialized, as in every loader worker.
            torch.random.default_generator.manual_seed(seed)
            return self.dataset[index]
