"""Skipping unreadable samples without crashing, and counting them across worker processes.

A dataset's ``__getitem__`` returns a per-sample dict ``{"pixels": (C, H, W) or (C, T, H, W)
float tensor, "label": int}`` (``"label"`` only for labeled sources) or ``None`` when its file
cannot be read. Two pieces turn that into safe batches:

* :class:`SkipBadSamples` wraps the dataset. When a sample fails it records the failure and
  substitutes another index (up to ``max_retries`` tries), so batches keep their size. The
  failures travel *inside* the returned sample under ``"num_skipped"`` / ``"skipped_paths"``,
  because a DataLoader worker process cannot update an object in the main process. With
  ``drop=True`` (evaluation) a failed sample is dropped instead: no other sample is scored
  in its place.
* :func:`collate_skipping` drops what could not be served, stacks the rest and sums the
  failures into ``batch["num_skipped"]`` (int) and ``batch["skipped_paths"]`` (list of str).
  When every sample of an evaluation batch was dropped it returns an empty batch (``B = 0``,
  shapes from a stand-in sample) that the evaluation steps skip.
  :class:`~mimkit.data.base.MimDataModule` pops both keys in the main process before the
  batch reaches the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

NUM_SKIPPED = "num_skipped"
SKIPPED_PATHS = "skipped_paths"
#: A readable sample travelling with a dropped one, only to give an all-dropped batch shapes.
STAND_IN = "stand_in"


def sample_name(dataset: Any, index: int) -> str:
    """Human-readable name of a sample (its file path when the dataset knows it).

    Args:
        dataset: A dataset, optionally with a ``sample_name(index) -> str`` method.
        index: Sample index.

    Returns:
        The dataset's name for the sample, else ``"index <index>"``.
    """
    namer = getattr(dataset, "sample_name", None)
    return str(namer(index)) if callable(namer) else f"index {index}"


class FileSamples(Dataset):
    """Base of datasets over ``(path, label)`` samples: their length, and each sample named
    by its file path in skip reports.

    Args:
        samples: ``(path, label)`` pairs.
    """

    def __init__(self, samples: Sequence[tuple[str, Any]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        """File path of sample ``index``."""
        return str(self.samples[index][0])


class SkipBadSamples(Dataset):
    """Dataset wrapper replacing unreadable samples by other, deterministic random ones.

    A failed read of index ``i`` is retried with indices drawn from a generator seeded by
    ``i``, so a given bad index always gets the same substitute (evaluation stays
    reproducible across epochs and worker counts). Every failed read is recorded in the
    returned sample. When all ``1 + max_retries`` reads fail the wrapper returns a dict
    without ``"pixels"`` that carries only the failure record; :func:`collate_skipping`
    drops it from the batch and counts its failures.

    With ``drop=True`` (evaluation) the failed sample is dropped rather than replaced, so
    no sample is scored twice or in another one's place: the wrapper returns the failure
    record of that one sample (one skipped read), plus the substitute under ``"stand_in"``,
    which :func:`collate_skipping` uses only for the shapes of a batch whose samples all
    failed.

    Args:
        dataset: Map-style dataset returning a sample dict or ``None``.
        max_retries: How many substitute indices to try after a failure.
        drop: Drop failed samples instead of substituting them (validation / test).
    """

    def __init__(self, dataset: Dataset, max_retries: int = 10, drop: bool = False) -> None:
        self.dataset = dataset
        self.max_retries = max_retries
        self.drop = drop

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def sample_name(self, index: int) -> str:
        """Name of the sample at ``index`` in the wrapped dataset."""
        return sample_name(self.dataset, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        if sample is not None:
            return sample
        failed = [self.sample_name(index)]
        substitute = self._substitute(index, [] if self.drop else failed)
        if self.drop:
            sample = {} if substitute is None else {STAND_IN: substitute}
        else:
            sample = {} if substitute is None else substitute
        sample[NUM_SKIPPED] = len(failed)
        sample[SKIPPED_PATHS] = failed
        return sample

    def _substitute(self, index: int, failed: list[str]) -> dict[str, Any] | None:
        """The first readable of ``max_retries`` indices drawn for ``index`` (or ``None``);
        the names of the unreadable ones are appended to ``failed``."""
        if self.max_retries <= 0 or len(self) <= 1:
            return None
        generator = torch.Generator().manual_seed(index)
        for other in torch.randint(len(self), (self.max_retries,), generator=generator):
            sample = self.dataset[int(other)]
            if sample is not None:
                return sample
            failed.append(self.sample_name(int(other)))
        return None


def collate_skipping(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Collate sample dicts, dropping unreadable ones and counting them.

    Args:
        samples: ``B`` samples, each ``None`` (one failed read), a dict without ``"pixels"``
            (only a failure record from :class:`SkipBadSamples`) or a sample dict with
            ``"pixels"`` of shape ``(C, H, W)`` or ``(C, T, H, W)`` and optional ``"label"``.

    Returns:
        ``{"pixels": (B', C, H, W) or (B', C, T, H, W), "label": (B',) long (if present),
        "num_skipped": int, "skipped_paths": list[str]}`` with ``B'`` the number of served
        samples; ``B' = 0`` when every sample was dropped (``SkipBadSamples(drop=True)``).

    Raises:
        RuntimeError: If no sample of the batch could be served and none was dropped with a
            stand-in (with retries this means the data is essentially all unreadable).
    """
    num_skipped = 0
    skipped_paths: list[str] = []
    kept: list[dict[str, Any]] = []
    stand_ins: list[dict[str, Any]] = []
    for sample in samples:
        if sample is None:
            num_skipped += 1
            continue
        num_skipped += int(sample.pop(NUM_SKIPPED, 0))
        skipped_paths.extend(sample.pop(SKIPPED_PATHS, []))
        if STAND_IN in sample:
            stand_ins.append(sample.pop(STAND_IN))
        if "pixels" in sample:
            kept.append(sample)
    if kept:
        batch = default_collate(kept)
    elif stand_ins:
        batch = _empty(default_collate(stand_ins[:1]))
    else:
        raise RuntimeError(
            f"Every sample of a batch of {len(samples)} failed to load ({num_skipped} failed "
            f"reads, e.g. {skipped_paths[:5]}); the dataset looks unreadable."
        )
    batch[NUM_SKIPPED] = num_skipped
    batch[SKIPPED_PATHS] = skipped_paths
    return batch


def _empty(batch: Any) -> Any:
    """The same collated structure with no sample: tensors ``(0, ...)``, per-sample lists
    (e.g. names) empty, lists of batched tensors (views) kept as lists."""
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, dict):
        return {key: _empty(value) for key, value in batch.items()}
    if isinstance(batch, list) and batch and all(isinstance(v, torch.Tensor) for v in batch):
        return [_empty(value) for value in batch]
    return []
