"""Evaluation counts each sample once: an unpadded share per DDP rank, unreadable samples
dropped (not replaced), and what that gives the accuracy of a real validation run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from tiny import tiny_encoder
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from mimkit.data import Synthetic
from mimkit.data.base import MimDataModule
from mimkit.data.collate import SkipBadSamples, collate_skipping
from mimkit.finetune import LinearProbe

EXACT = SimpleNamespace(exact_eval=True)  # what mimkit.finetune's modules declare


def fake_trainer(world: int, rank: int, module: Any = EXACT, strategy: Any = None) -> Any:
    return SimpleNamespace(
        world_size=world,
        global_rank=rank,
        strategy=strategy if strategy is not None else DDPStrategy(),
        lightning_module=module,
    )


def synthetic(num_val: int = 10) -> Synthetic:
    data = Synthetic(img_size=8, num_samples=4, num_val_samples=num_val, batch_size=3)
    data.setup("fit")
    return data


# ----- DDP: an unpadded share per rank --------------------------------------------------


def test_ranks_share_the_split_exactly_once():
    data = synthetic(10)
    seen: list[int] = []
    served = 0
    for rank in range(3):
        data.trainer = fake_trainer(3, rank)
        loader = data.val_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)  # Lightning leaves it in place
        seen += list(loader.sampler)
        served += sum(len(batch["pixels"]) for batch in loader)
    assert sorted(seen) == list(range(10))  # union is the split, nothing repeated
    assert served == 10  # Lightning's DistributedSampler would serve 12 (4 per rank)


def test_single_process_and_other_setups_keep_the_plain_loader():
    data = synthetic(10)
    assert isinstance(data.val_dataloader().sampler, SequentialSampler)  # no trainer
    for trainer in (
        fake_trainer(1, 0),  # one process
        fake_trainer(3, 1, module=SimpleNamespace()),  # a pretraining module (no exact_eval)
        fake_trainer(3, 1, strategy=FSDPStrategy()),  # sharded: uneven batches would hang
    ):
        data.trainer = trainer
        assert isinstance(data.val_dataloader().sampler, SequentialSampler)


def test_fewer_samples_than_ranks_falls_back_to_lightnings_sampler():
    data = synthetic(2)
    data.trainer = fake_trainer(3, 2)
    with pytest.warns(UserWarning, match="2 evaluation samples for 3 ranks"):
        loader = data.val_dataloader()
    assert isinstance(loader.sampler, SequentialSampler)


# ----- unreadable samples ---------------------------------------------------------------


class Flaky(Dataset):
    """``(1, 4, 4)`` images whose pixels and label encode the index; ``bad`` are unreadable."""

    def __init__(self, length: int, bad: set[int], labels: list[int] | None = None) -> None:
        self.length, self.bad = length, bad
        self.labels = labels if labels is not None else list(range(length))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if index in self.bad:
            return None
        return {"pixels": torch.full((3, 4, 4), float(index)), "label": self.labels[index]}

    def sample_name(self, index: int) -> str:
        return f"clip{index}.mp4"


def batches(dataset: Dataset, drop: bool, batch_size: int) -> list[dict[str, Any]]:
    wrapped = SkipBadSamples(dataset, max_retries=3, drop=drop)
    return list(DataLoader(wrapped, batch_size=batch_size, collate_fn=collate_skipping))


def test_drop_mode_drops_and_counts_instead_of_substituting():
    dropped = batches(Flaky(6, bad={1, 4}), drop=True, batch_size=3)
    assert [b["label"].tolist() for b in dropped] == [[0, 2], [3, 5]]
    assert [b["pixels"][:, 0, 0, 0].tolist() for b in dropped] == [[0.0, 2.0], [3.0, 5.0]]
    assert [b["num_skipped"] for b in dropped] == [1, 1]
    assert [b["skipped_paths"] for b in dropped] == [["clip1.mp4"], ["clip4.mp4"]]
    replaced = batches(Flaky(6, bad={1, 4}), drop=False, batch_size=3)  # training: unchanged
    assert [len(b["label"]) for b in replaced] == [3, 3]  # each failed read counts there
    assert all(b["num_skipped"] >= 1 for b in replaced)


def test_a_batch_of_only_unreadable_samples_is_empty_with_the_right_shapes():
    empty, last = batches(Flaky(3, bad={0, 1}), drop=True, batch_size=2)
    assert empty["pixels"].shape == (0, 3, 4, 4) and empty["label"].shape == (0,)
    assert empty["num_skipped"] == 2 and empty["skipped_paths"] == ["clip0.mp4", "clip1.mp4"]
    assert last["label"].tolist() == [2]
    with pytest.raises(RuntimeError, match="failed to load"):  # nothing readable at all
        batches(Flaky(2, bad={0, 1}), drop=True, batch_size=2)


class FlakyData(MimDataModule):
    """Validation split: a :class:`Flaky` dataset; one class-0 image for training."""

    def __init__(self, val: Flaky, batch_size: int = 2) -> None:
        super().__init__(img_size=4, batch_size=batch_size, num_classes=2)
        self.val = val

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = Flaky(2, bad=set(), labels=[0, 0])
        self.val_dataset = self.val


def test_data_module_drops_only_for_exact_evaluation():
    data = FlakyData(Flaky(4, bad={2}))
    data.setup()
    data.trainer = fake_trainer(1, 0)
    assert [b["label"].tolist() for b in data.val_dataloader()] == [[0, 1], [3]]
    data.trainer = fake_trainer(1, 0, module=SimpleNamespace())  # pretraining: substitutes
    assert sum(len(b["label"]) for b in data.val_dataloader()) == 4


def test_validation_accuracy_counts_each_readable_sample_once():
    """A probe that always predicts class 0; readable labels 0, 1, 1, 1 -> exactly 25%.

    Samples 4 and 5 (the whole last batch) are unreadable: substituting them would score 6
    samples (1/6, 2/6 or 3/6), never 1/4.
    """
    probe = LinearProbe(encoder=tiny_encoder(img_size=4, patch_size=2), num_classes=2, pool="avg")
    with torch.no_grad():
        probe.head[1].weight.zero_()
        probe.head[1].bias.copy_(torch.tensor([5.0, -5.0]))
    data = FlakyData(Flaky(6, bad={4, 5}, labels=[0, 1, 1, 1, 0, 0]))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    with pytest.warns(UserWarning, match="init_from is not set"):
        (result,) = trainer.validate(probe, datamodule=data)
    assert result["val/acc1"] == pytest.approx(0.25)
    assert torch.isfinite(torch.tensor(result["val/loss"]))
    assert data.skipped_samples["validate"] == 2
