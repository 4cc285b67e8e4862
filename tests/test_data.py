"""Tests for mimkit.data: batch contract, built-in sources, image folders and skipped files."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from mimkit.data import (
    DataConfigError,
    Digits,
    ImageFolder,
    ReportSkippedSamples,
    SkipBadSamples,
    Synthetic,
    collate_skipping,
    eval_transform,
    mae_train_transform,
)


def _drain(datamodule, loader) -> list[dict]:
    """Iterate a loader like the trainer does: pop the bookkeeping keys in the main process."""
    return [datamodule.on_before_batch_transfer(batch, 0) for batch in loader]


# --- transforms -------------------------------------------------------------------------------


def test_eval_resize_follows_mae_above_224_px() -> None:
    image = Image.new("RGB", (600, 500))
    resize = lambda size: eval_transform(size).transforms[0].size  # noqa: E731
    assert resize(224) == 256 and resize(32) == 36  # 0.875 crop ratio
    assert resize(384) == 384 and resize(448) == 448  # MAE: resize to the size, no margin
    assert eval_transform(448)(image).shape == (3, 448, 448)


def test_transforms_shapes() -> None:
    image = Image.new("RGB", (50, 40), (255, 0, 0))
    assert mae_train_transform(24, (0.5,) * 3, (0.5,) * 3)(image).shape == (3, 24, 24)
    out = eval_transform(24, (0.5,) * 3, (0.5,) * 3)(image)
    assert out.shape == (3, 24, 24)
    assert torch.allclose(out[0], torch.ones(24, 24), atol=1e-2)  # red = 1 after (1-.5)/.5


# --- digits -----------------------------------------------------------------------------------


def test_digits_batches_and_normalization() -> None:
    dm = Digits(img_size=16, batch_size=32)
    assert dm.num_classes == 10 and len(dm.mean) == len(dm.std) == 3
    assert len(dm.train_dataset) + len(dm.val_dataset) == 1797
    assert len(dm.val_dataset) == pytest.approx(0.2 * 1797, abs=1)
    batch = _drain(dm, dm.train_dataloader())[0]
    assert set(batch) == {"pixels", "label"}
    assert batch["pixels"].shape == (32, 3, 16, 16) and batch["pixels"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["label"].shape == (32,)
    # Un-augmented train split through the validation transform is standardized.
    train = dm.train_dataset
    pixels = torch.stack([train.transform.transforms[-1](img) for img in train.images])
    assert pixels.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert pixels.std().item() == pytest.approx(1.0, abs=1e-3)
    labels = torch.cat([b["label"] for b in _drain(dm, dm.val_dataloader())])
    assert len(labels) == len(dm.val_dataset)
    assert set(labels.tolist()) == set(range(10))


def test_digits_split_deterministic_under_seed() -> None:
    a, b, c = Digits(seed=1), Digits(seed=1), Digits(seed=2)
    assert torch.equal(a.val_dataset.labels, b.val_dataset.labels)
    assert torch.equal(a.val_dataset.images, b.val_dataset.images)
    assert not torch.equal(a.val_dataset.images, c.val_dataset.images)
    assert torch.equal(a.val_dataset[3]["pixels"], b.val_dataset[3]["pixels"])


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_deterministic_and_video() -> None:
    dm = Synthetic(img_size=8, num_samples=20, num_val_samples=4, batch_size=4)
    a, b = dm.train_dataset[5], Synthetic(img_size=8).train_dataset[5]
    assert torch.equal(a["pixels"], b["pixels"]) and a["label"] == 5
    assert not torch.equal(a["pixels"], dm.train_dataset[6]["pixels"])
    assert not torch.equal(dm.val_dataset[0]["pixels"], dm.train_dataset[0]["pixels"])
    video = Synthetic(img_size=8, num_frames=4, batch_size=2, num_classes=3)
    batch = _drain(video, video.train_dataloader())[0]
    assert batch["pixels"].shape == (2, 3, 4, 8, 8)
    assert torch.all(batch["label"] < 3)
    unlabeled = Synthetic(img_size=8, num_classes=None, batch_size=2)
    assert "label" not in _drain(unlabeled, unlabeled.train_dataloader())[0]


# --- image folders ----------------------------------------------------------------------------


def _write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = tuple(random.Random(seed).randrange(256) for _ in range(3))
    Image.new("RGB", (20, 16), color).save(path)


def _class_tree(root: Path, per_class: int = 4) -> None:
    for c, name in enumerate(["cat", "dog"]):
        for i in range(per_class):
            ext = ".png" if i % 2 else ".JPG"
            _write_image(root / name / f"{i}{ext}", seed=10 * c + i)


def test_image_folder_class_tree(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train")
    _class_tree(tmp_path / "val", per_class=2)
    dm = ImageFolder(
        tmp_path / "train", val_root=tmp_path / "val", img_size=8, batch_size=4, num_workers=0
    )
    dm.setup("fit")
    assert dm.num_classes == 2
    batches = _drain(dm, dm.train_dataloader())
    assert len(batches) == 2 and batches[0]["pixels"].shape == (4, 3, 8, 8)
    val = _drain(dm, dm.val_dataloader())
    assert torch.cat([b["label"] for b in val]).tolist() == [0, 0, 1, 1]


def test_image_folder_flat_is_unlabeled(tmp_path: Path) -> None:
    for i in range(3):
        _write_image(tmp_path / f"img{i}.webp", seed=i)
    (tmp_path / "notes.txt").write_text("not an image")
    dm = ImageFolder(tmp_path, img_size=8, batch_size=3, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes is None
    batch = _drain(dm, dm.train_dataloader())[0]
    assert set(batch) == {"pixels"} and batch["pixels"].shape == (3, 3, 8, 8)
    assert dm.val_dataloader() == []


def test_image_folder_list_file(tmp_path: Path) -> None:
    for i in range(4):
        _write_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    listed = tmp_path / "train.txt"
    listed.write_text(
        "# path label\nimgs/0.png 3\nimgs/1.png,1\n\n" + f"{tmp_path}/imgs/2.png\t0\n"
    )
    dm = ImageFolder(listed, val_root=listed, img_size=8, batch_size=3, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 4
    assert _drain(dm, dm.val_dataloader())[0]["label"].tolist() == [3, 1, 0]
    unlabeled = tmp_path / "unlabeled.csv"
    unlabeled.write_text("imgs/0.png\nimgs/3.png\n")
    dm = ImageFolder(unlabeled, img_size=8, batch_size=2, num_workers=0)
    dm.setup("fit")
    assert set(_drain(dm, dm.train_dataloader())[0]) == {"pixels"}


def test_image_folder_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolder(missing).setup("fit")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no images"):
        ImageFolder(empty).setup("fit")
    (empty / "a_class").mkdir()
    with pytest.raises(ValueError, match="empty.*no images"):
        ImageFolder(empty).setup("fit")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="blank.txt.*lists no images"):
        ImageFolder(blank).setup("fit")
    with pytest.raises(FileNotFoundError, match="nope"):  # before any rank starts, too
        ImageFolder(missing).preflight("fit", world_size=8)


def test_fewer_samples_than_a_batch_is_an_error_not_an_empty_epoch(tmp_path: Path) -> None:
    _class_tree(tmp_path, per_class=3)  # 6 images
    for batch_size in (6, 8):
        dm = ImageFolder(tmp_path, img_size=8, batch_size=batch_size, num_workers=0)
        dm.setup("fit")
        if batch_size == 6:
            assert len(dm.train_dataloader()) == 1
            continue
        with pytest.raises(DataConfigError, match="6 training samples, 6 per rank on 1 rank"):
            dm.train_dataloader()


# --- broken files: skipped, counted, reported -------------------------------------------------


def _tree_with_bad_files(root: Path) -> set[str]:
    """8 good images and 2 bad ones (random bytes named .jpg, a truncated JPEG): 10 samples."""
    _class_tree(root)
    garbage = root / "cat" / "garbage.jpg"
    garbage.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(300)))
    good = root / "dog" / "full.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, quality=95)
    truncated = root / "dog" / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    good.unlink()
    return {str(garbage), str(truncated)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_files_are_skipped_and_counted(tmp_path: Path, num_workers: int) -> None:
    bad = _tree_with_bad_files(tmp_path)
    dm = ImageFolder(tmp_path, img_size=8, batch_size=5, num_workers=num_workers)
    dm.max_reported_paths = 100
    dm.setup("fit")
    batches = _drain(dm, dm.train_dataloader())
    # Substitution keeps batches full; every failed read is counted with its path.
    assert [len(b["pixels"]) for b in batches] == [5, 5]
    assert dm.skipped_samples["unknown"] >= len(bad)
    assert set(dm.skipped_paths["unknown"]) == bad

    # Without retries each bad file is dropped from its batch: the count is exact.
    dm = ImageFolder(tmp_path, img_size=8, batch_size=5, num_workers=num_workers)
    dm.max_retries = 0
    dm.setup("fit")
    batches = _drain(dm, dm.train_dataloader())
    assert sum(len(b["pixels"]) for b in batches) == 8
    assert dm.skipped_samples == {"unknown": 2}


def test_collate_never_returns_an_empty_batch() -> None:
    sample = {"pixels": torch.zeros(3, 2, 2), "label": 1}
    batch = collate_skipping([None, dict(sample), {"num_skipped": 2, "skipped_paths": ["a", "b"]}])
    assert batch["pixels"].shape == (1, 3, 2, 2) and batch["num_skipped"] == 3
    assert batch["skipped_paths"] == ["a", "b"]
    with pytest.raises(RuntimeError, match="unreadable"):
        collate_skipping([None, {"num_skipped": 1, "skipped_paths": ["x"]}])


def test_skip_wrapper_substitutes_deterministically() -> None:
    class HalfBroken(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int):
            return None if i % 2 else {"pixels": torch.full((1,), float(i))}

    wrapped = SkipBadSamples(HalfBroken())
    first = wrapped[3]
    assert first["num_skipped"] >= 1 and first["skipped_paths"][0] == "index 3"
    assert torch.equal(first["pixels"], wrapped[3]["pixels"])
    assert first["pixels"].item() % 2 == 0


class _TinyModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        assert "num_skipped" not in batch and len(batch["pixels"]) > 0
        return self.linear(batch["pixels"].mean(dim=(2, 3))).pow(2).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        assert "skipped_paths" not in batch

    def test_step(self, batch: dict, batch_idx: int) -> None:
        assert "skipped_paths" not in batch

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_trainer_reports_skipped_files(tmp_path: Path, num_workers: int) -> None:
    bad = _tree_with_bad_files(tmp_path / "train")
    _tree_with_bad_files(tmp_path / "val")
    dm = ImageFolder(
        tmp_path / "train",
        val_root=tmp_path / "val",
        img_size=8,
        batch_size=5,
        num_workers=num_workers,
    )
    dm.max_retries = 0  # exact counts: each bad file read once per epoch
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ReportSkippedSamples()],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_TinyModel(), datamodule=dm)
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    train_msg = next(m for m in messages if "during train" in m)
    assert "Skipped 2 unreadable" in train_msg
    assert all(path in train_msg for path in bad)
    assert any("Skipped 2 unreadable" in m and "during validate" in m for m in messages)
    assert trainer.callback_metrics["data/skipped_train"].item() == 2
    assert trainer.callback_metrics["data/skipped_validate"].item() == 2
    assert dm.skipped_samples["train"] == 0  # reset for the next epoch
    if num_workers == 0:  # the test stage is reported too
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.test(_TinyModel(), datamodule=dm)
        messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
        assert any("Skipped 2 unreadable" in m and "during test" in m for m in messages)
        assert trainer.callback_metrics["data/skipped_test"].item() == 2
        assert dm.skipped_samples["test"] == 0


def test_trainer_runs_without_validation_source() -> None:
    dm = Synthetic(img_size=4, num_samples=8, num_val_samples=0, batch_size=4)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ReportSkippedSamples()],
    )
    trainer.fit(_TinyModel(), datamodule=dm)
    assert trainer.callback_metrics["data/skipped_train"].item() == 0
