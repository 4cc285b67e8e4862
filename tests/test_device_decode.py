"""Device-side decoding: same crops as the worker path, skipped files, CLI training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tiny import CPU_TRAINER

from mimkit.cli import main
from mimkit.data import ImageFolder
from mimkit.data.device_decode import DeviceDecodeCrop, EncodedImageDataset, collate_encoded
from mimkit.data.folder import ImageFileDataset
from mimkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, mae_train_transform

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int, suffix: str = ".jpg") -> list[tuple[str, int]]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((80 + 8 * i, 60), Image.BICUBIC)
        path = folder / f"{i}{suffix}"
        image.save(path, quality=95) if suffix == ".jpg" else image.save(path)
        samples.append((str(path), i % 2))
    return samples


def test_device_path_draws_the_same_crops_as_the_worker_path(tmp_path):
    samples = write_images(tmp_path, 3) + write_images(tmp_path, 2, ".png")
    workers = ImageFileDataset(samples, mae_train_transform(32, IMAGENET_MEAN, IMAGENET_STD))
    encoded = EncodedImageDataset(samples, scale=(0.2, 1.0))
    decoder = DeviceDecodeCrop(32, IMAGENET_MEAN, IMAGENET_STD)
    expected, items = [], []
    for index in range(len(samples)):
        torch.manual_seed(100 + index)
        expected.append(workers[index]["pixels"])
        torch.manual_seed(100 + index)
        items.append(encoded[index])
    assert items[0]["encoded"].ndim == 1 and items[-1]["encoded"].shape[0] == 3  # JPEG / PNG
    batch = decoder(collate_encoded(items), "cpu")
    assert batch["pixels"].shape == (5, 3, 32, 32) and batch["label"].tolist() == [0, 1, 0, 0, 1]
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for got, want in zip(batch["pixels"], torch.stack(expected), strict=True):
        # PIL's and torchvision's bicubic antialiasing differ by a few levels at most
        levels = ((got - want) * std * 255).abs()
        assert levels.mean() < 1.0 and levels.max() < 12


def test_image_folder_decodes_on_device_and_counts_broken_files(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_images(tmp_path / name, 3)
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data = ImageFolder(tmp_path, img_size=32, batch_size=7, num_workers=0, decode_on_device=True)
    data.setup("fit")
    batch = data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert set(batch) == {"pixels", "label"}
    assert batch["pixels"].shape == (7, 3, 32, 32) and batch["pixels"].dtype == torch.float32
    assert data.skipped_samples["unknown"] >= 1
    assert abs(float(batch["pixels"].mean())) < 3


def test_mae_trains_on_device_decoded_batches(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_images(folder, 8)
    args = [
        "pretrain", "fit", "--config", str(ROOT / "recipes/quickstart/mae_digits.yaml"),
        "--data", "mimkit.data.ImageFolder", "--data.root", str(folder), "--data.img_size", "32",
        "--data.batch_size", "4", "--data.num_workers", "0", "--data.decode_on_device", "true",
        "--model.encoder.init_args.model_kwargs", '{"depth": 1}',
        *CPU_TRAINER, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--preview.every_n_steps", "0",
    ]  # fmt: skip
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
