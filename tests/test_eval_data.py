"""Feature-extraction data: the training split read without augmentation, or a clear error;
unreadable images dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mimkit.data import ImageFolder, Shards, Synthetic
from mimkit.data.shard_writer import write_shards
from mimkit.finetune import ConfigError, FineTuneImageFolder, eval_batches


def image_folder(root: Path, per_class: int = 3) -> Path:
    """``root/{a,b}/i.png``: 48x40 images of random noise (a random crop would change them)."""
    generator = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")
    return root


def pixels_of(data, split: str) -> torch.Tensor:
    return torch.cat([batch["pixels"] for batch in eval_batches(data, split, batch_size=4)])


def test_training_split_is_read_with_the_validation_transform(tmp_path):
    root = image_folder(tmp_path / "images")
    data = ImageFolder(root, val_root=root, img_size=16, batch_size=4, num_workers=0)
    train = pixels_of(data, "train")
    torch.testing.assert_close(train, pixels_of(data, "train"))  # no random crop / flip
    torch.testing.assert_close(train, pixels_of(data, "val"))  # the same files, same view


def test_shard_training_split_is_read_once_in_order_without_augmentation(tmp_path):
    root = image_folder(tmp_path / "images")
    urls = write_shards(root, str(tmp_path / "s-%03d.tar"), max_count=2, progress=False)
    # resampled training with a shuffle buffer: k-NN must still see each sample once
    data = Shards(
        urls, val_urls=urls, img_size=16, batch_size=4, num_workers=0, resampled=True,
        epoch_length=4, shuffle_buffer=10,
    )  # fmt: skip
    train = pixels_of(data, "train")
    assert train.shape == (6, 3, 16, 16)
    torch.testing.assert_close(train, pixels_of(data, "val"))


@pytest.mark.parametrize("source", ["folder", "shards"])
def test_decoding_on_the_device_is_a_clear_error(tmp_path, source):
    root = image_folder(tmp_path / "images")
    if source == "folder":
        data = ImageFolder(root, val_root=root, img_size=16, num_workers=0, decode_on_device=True)
    else:
        urls = write_shards(root, str(tmp_path / "s-%03d.tar"), progress=False)
        data = Shards(urls, val_urls=urls, img_size=16, num_workers=0, decode_on_device=True)
    with pytest.raises(ConfigError, match="decode_on_device: false"):
        next(eval_batches(data, "train"))
    assert len(pixels_of(data, "val")) == 6  # validation is decoded in the workers


def test_finetune_folder_refuses_to_drop_its_augmentation_silently(tmp_path):
    root = image_folder(tmp_path / "images")
    with pytest.raises(ConfigError, match="RandAugment"):
        FineTuneImageFolder(root, val_root=root, img_size=16, decode_on_device=True)
    with pytest.raises(ConfigError, match="random erasing"):
        FineTuneImageFolder(root, val_root=root, auto_augment=None, decode_on_device=True)
    plain = FineTuneImageFolder(
        root, val_root=root, img_size=16, auto_augment=None, re_prob=0.0, decode_on_device=True
    )
    plain.setup("fit")
    assert plain.train_dataset is not None


def test_augmented_training_split_without_a_validation_transform_is_an_error(tmp_path):
    root = image_folder(tmp_path / "images")
    data = ImageFolder(root, img_size=16, num_workers=0)  # no validation split
    with pytest.raises(ConfigError, match="no validation transform"):
        next(eval_batches(data, "train"))


def test_sources_without_a_transform_are_read_as_they_are():
    data = Synthetic(img_size=8, num_samples=6, num_val_samples=2, batch_size=4)
    torch.testing.assert_close(pixels_of(data, "train"), pixels_of(data, "train"))


def test_unreadable_images_are_dropped_and_counted(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "b" / "broken.png").write_bytes(b"not an image")
    data = ImageFolder(root, val_root=root, img_size=16, num_workers=0)
    labels = torch.cat([batch["label"] for batch in eval_batches(data, "val", batch_size=4)])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]  # 7 files, 6 images: none scored twice
    assert data.skipped_samples["unknown"] == 1
