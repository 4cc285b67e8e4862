"""ColorMAE masks: counts, seeding, the filters' frequency bands, and use from a recipe."""

from pathlib import Path

import pytest
import torch
from test_masking import _check_partition
from tiny import CPU_TRAINER

from mimkit.cli import main
from mimkit.pretrain import ColorMasking, color_mask, filtered_noise, random_mask

COLORS = ("red", "blue", "green", "purple")
QUICKSTART = Path(__file__).resolve().parents[1] / "recipes/quickstart/mae_digits.yaml"


def band_power(noise: torch.Tensor) -> dict[str, float]:
    """Mean power of ``(B, H, W)`` noise at low / mid / high radial frequency (cycles/token)."""
    power = torch.fft.fft2(noise - noise.mean((1, 2), keepdim=True)).abs().pow(2).mean(0)
    fy = torch.fft.fftfreq(noise.shape[1]).view(-1, 1)
    fx = torch.fft.fftfreq(noise.shape[2]).view(1, -1)
    radius = (fy**2 + fx**2).sqrt()
    bands = {"low": (0.0, 0.08), "mid": (0.12, 0.2), "high": (0.35, 1.0)}
    return {
        name: float(power[(radius > lo) & (radius <= hi)].mean())
        for name, (lo, hi) in bands.items()
    }


@pytest.mark.parametrize("color", COLORS)
def test_each_filter_keeps_its_frequency_band(color):
    gen = torch.Generator().manual_seed(0)
    p = band_power(filtered_noise(256, (32, 32), color, 1.0, 2.0, generator=gen))
    if color == "red":  # low-pass
        assert p["low"] > 2 * p["mid"] and p["mid"] > 10 * p["high"]
    elif color == "blue":  # high-pass
        assert p["high"] > 3 * p["mid"] and p["mid"] > 3 * p["low"]
    elif color == "green":  # band-pass
        assert p["mid"] > 3 * p["low"] and p["mid"] > 10 * p["high"]
    else:  # band-stop
        assert p["low"] > 1.5 * p["mid"] and p["high"] > 1.5 * p["mid"]


def visible_neighbours(mask) -> float:
    """Fraction of a visible token's right and lower neighbours that are visible too."""
    grid = (~mask.mask).view(-1, 14, 14).float()
    pairs = (grid[:, :, 1:] * grid[:, :, :-1]).sum() + (grid[:, 1:] * grid[:, :-1]).sum()
    return float(pairs / (grid[:, :, 1:].sum() + grid[:, 1:].sum()))


def test_low_pass_masks_clump_and_high_pass_masks_spread():
    gen = torch.Generator().manual_seed(1)
    white = visible_neighbours(random_mask(128, 196, 0.75, generator=gen))
    red = visible_neighbours(color_mask(128, (14, 14), 0.75, "red", generator=gen))
    blue = visible_neighbours(color_mask(128, (14, 14), 0.75, "blue", generator=gen))
    assert abs(white - 48 / 195) < 0.03  # random: about (keep - 1) / (N - 1)
    assert red > white + 0.3 and blue < white - 0.04


@pytest.mark.parametrize("color", COLORS)
@pytest.mark.parametrize("grid,ratio", [((14, 14), 0.75), ((8, 6), 0.5), ((7, 7), 0.0)])
def test_counts_partition_and_seeding(color, grid, ratio):
    make = ColorMasking(ratio, color)
    mask = make(16, grid, generator=torch.Generator().manual_seed(3))
    num_tokens = grid[0] * grid[1]
    _check_partition(mask, num_tokens, num_tokens - int(num_tokens * (1 - ratio)))
    assert make.num_visible(grid) == mask.num_keep
    again = make(16, grid, generator=torch.Generator().manual_seed(3))
    other = make(16, grid, generator=torch.Generator().manual_seed(4))
    assert torch.equal(mask.mask, again.mask)
    assert ratio == 0.0 or not torch.equal(mask.mask, other.mask)
    assert ratio == 0.0 or len({tuple(row) for row in mask.mask.tolist()}) == 16


def test_the_largest_noise_values_stay_visible():
    gen = torch.Generator().manual_seed(5)
    noise = filtered_noise(4, (14, 14), "green", generator=gen)
    mask = color_mask(4, (14, 14), 0.75, "green", generator=torch.Generator().manual_seed(5))
    flat = noise.flatten(1)
    assert (
        flat.gather(1, mask.ids_keep).min(1).values > flat.gather(1, mask.ids_masked).max(1).values
    ).all()


def test_clear_errors():
    with pytest.raises(ValueError, match="color must be one of"):
        ColorMasking(0.75, "pink")
    with pytest.raises(ValueError, match="sigma_wide > sigma"):
        ColorMasking(0.75, "green", sigma=2.0, sigma_wide=1.0)
    ColorMasking(0.75, "red", sigma=3.0, sigma_wide=1.0)  # red and blue use one Gaussian
    with pytest.raises(ValueError, match="2D grid"):
        ColorMasking(0.75)(2, (2, 4, 4))
    with pytest.raises(ValueError, match="mask_ratio"):
        ColorMasking(1.0)


def test_a_recipe_trains_with_color_masking(tmp_path):
    rc = main(
        [
            "pretrain", "fit", "--config", str(QUICKSTART),
            "--model.masking", "mimkit.pretrain.ColorMasking",
            "--model.masking.color", "purple",
            "--model.encoder.init_args.model_kwargs", '{"depth": 1}',
            *CPU_TRAINER,
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
            "--preview.every_n_steps", "0",
            "--trainer.default_root_dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert rc == 0
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "mimkit.pretrain.ColorMasking" in config and "color: purple" in config
