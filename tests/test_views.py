"""Two-view transforms and the data modules' ``"views"`` batches."""

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.data import Digits, ImageFolder, PixelShiftViews, Synthetic, TwoCropViews
from mimkit.data.views import pixel_shift_pair


def find_shift(online: torch.Tensor, target: torch.Tensor, max_shift: int):
    """The (dy, dx) for which target is online moved by (dy, dx), or None."""
    size = online.shape[-1]
    for dy in range(max_shift + 1):
        for dx in range(max_shift + 1):
            if torch.equal(online[..., dy:, dx:], target[..., : size - dy, : size - dx]):
                return dy, dx
    return None


def test_pixel_shift_pair_crops_overlapping_windows():
    image = torch.arange(3 * 20 * 20, dtype=torch.float32).view(3, 20, 20)
    shifts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        online, target = pixel_shift_pair(image, 16, 4)
        assert online.shape == target.shape == (3, 16, 16)
        torch.testing.assert_close(online, image[:, :16, :16])
        shift = find_shift(online, target, 4)
        assert shift is not None
        dy, dx = shift
        torch.testing.assert_close(target, image[:, dy : dy + 16, dx : dx + 16])
        shifts.add(shift)
    assert len(shifts) > 5  # the shift is random
    with pytest.raises(ValueError):
        pixel_shift_pair(image, 18, 4)


def test_pixel_shift_views_on_pil_images_are_shifted_copies():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    transform = PixelShiftViews(max_shift=3, flip=False, color=False).build(24, mean, std)
    torch.manual_seed(0)
    views = transform(image)
    assert len(views) == 2 and all(
        v.shape == (3, 24, 24) and v.dtype == torch.float32 for v in views
    )
    assert find_shift(views[0], views[1], 3) is not None
    # With colour augmentation the target view's pixels change but the online view's do not.
    colored = PixelShiftViews(max_shift=3, flip=False, color=True).build(24, mean, std)
    torch.manual_seed(0)
    again = colored(image)
    torch.testing.assert_close(again[0], views[0])


def test_two_crop_views_are_independent_and_seeded():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    transform = TwoCropViews().build(32, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(3)
    first = transform(image)
    torch.manual_seed(3)
    second = transform(image)
    assert [v.shape for v in first] == [(3, 32, 32), (3, 32, 32)]
    assert not torch.equal(first[0], first[1])
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    assert all(v.min() >= -1.0 - 1e-6 and v.max() <= 1.0 + 1e-6 for v in first)  # [0,1] normalized


def test_digits_emit_views_for_training_only():
    data = Digits(img_size=32, batch_size=8, views=PixelShiftViews(max_shift=4, flip=False))
    batch = next(iter(data.train_dataloader()))
    views = batch["views"]
    assert len(views) == 2 and all(v.shape == (8, 3, 32, 32) for v in views)
    torch.testing.assert_close(batch["pixels"], views[0])
    assert batch["label"].shape == (8,)
    assert "views" not in next(iter(data.val_dataloader()))
    assert "views" not in Digits(img_size=32, batch_size=8).train_dataset[0]


def test_image_folder_and_synthetic_emit_views(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    folder = ImageFolder(tmp_path, img_size=16, batch_size=2, num_workers=0, views=TwoCropViews())
    folder.setup("fit")
    batch = next(iter(folder.train_dataloader()))
    assert [v.shape for v in batch["views"]] == [(2, 3, 16, 16)] * 2
    synthetic = Synthetic(
        img_size=16,
        batch_size=2,
        num_samples=4,
        num_val_samples=0,
        views=PixelShiftViews(max_shift=2),
    )
    sample = synthetic.train_dataset[0]
    assert [v.shape for v in sample["views"]] == [(3, 16, 16)] * 2
    assert torch.equal(sample["pixels"], sample["views"][0])
    with pytest.raises(ValueError, match="images"):
        Synthetic(img_size=16, num_frames=4, views=PixelShiftViews(max_shift=2))
