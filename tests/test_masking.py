import pytest
import torch

from mimkit.pretrain.color_masking import color_mask
from mimkit.pretrain.masking import (
    BlockMasking,
    RandomMasking,
    block_mask,
    random_cell_mask,
    random_mask,
    tube_mask,
)


def _check_partition(mask, num_tokens: int, num_masked: int) -> None:
    batch = mask.mask.shape[0]
    assert mask.mask.shape == (batch, num_tokens)
    assert mask.ids_keep.shape == (batch, num_tokens - num_masked)
    assert mask.ids_masked.shape == (batch, num_masked)
    assert (mask.mask.sum(1) == num_masked).all()
    both = torch.cat([mask.ids_keep, mask.ids_masked], 1).sort(1).values
    assert torch.equal(both, torch.arange(num_tokens).expand(batch, -1))
    assert mask.mask.gather(1, mask.ids_masked).all()
    assert not mask.mask.gather(1, mask.ids_keep).any()
    restored = torch.cat([mask.ids_keep, mask.ids_masked], 1).gather(1, mask.ids_restore)
    assert torch.equal(restored, torch.arange(num_tokens).expand(batch, -1))


@pytest.mark.parametrize("ratio,num_tokens", [(0.75, 196), (0.9, 64), (0.5, 10), (0.0, 7)])
def test_random_mask_counts_and_partition(ratio, num_tokens):
    mask = random_mask(16, num_tokens, ratio)
    expected = num_tokens - int(num_tokens * (1 - ratio))
    _check_partition(mask, num_tokens, expected)


def test_random_mask_seeded_determinism_and_variety():
    a = random_mask(8, 196, 0.75, generator=torch.Generator().manual_seed(3))
    b = random_mask(8, 196, 0.75, generator=torch.Generator().manual_seed(3))
    c = random_mask(8, 196, 0.75, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask, c.mask)
    assert len({tuple(row.tolist()) for row in a.ids_keep}) == 8  # samples differ


def test_random_mask_is_uniform_over_positions():
    mask = random_mask(4000, 16, 0.75, generator=torch.Generator().manual_seed(0))
    rate = mask.mask.float().mean(0)
    assert torch.allclose(rate, torch.full_like(rate, 0.75), atol=0.03)


def cell_sums(hidden: torch.Tensor, grid: tuple[int, int], cell: int) -> torch.Tensor:
    """``(B, H * W)`` bool -> ``(B, H / cell, W / cell)`` masked tokens per cell."""
    rows, cols = grid[0] // cell, grid[1] // cell
    return hidden.view(-1, rows, cell, cols, cell).sum((2, 4))


@pytest.mark.parametrize(
    "grid,ratio,cell,num_masked",
    [
        ((14, 14), 0.65, 2, 128),  # CMAE at 224 / 16: 32 of 49 cells masked
        ((8, 8), 0.65, 2, 44),  # 11 of 16 cells
        ((12, 6), 0.5, 3, 36),  # 4 of 8 cells of 3 x 3
        ((8, 8), 0.6, 4, 48),  # 3 of 4 cells: MAE's rule on cells (on tokens it gives 39)
    ],
)
def test_cell_mask_masks_whole_cells_with_exact_counts(grid, ratio, cell, num_masked):
    masking = RandomMasking(ratio, cell_size=cell)
    mask = masking(64, grid, generator=torch.Generator().manual_seed(0))
    num_tokens = grid[0] * grid[1]
    _check_partition(mask, num_tokens, num_masked)
    assert masking.num_visible(grid) == num_tokens - num_masked == mask.num_keep
    assert set(cell_sums(mask.mask, grid, cell).unique().tolist()) == {0, cell * cell}


def test_cell_mask_is_the_cell_draw_expanded_row_major():
    """Token ``h * W + w`` is masked exactly when its cell ``(h // 2, w // 2)`` is."""
    mask = random_cell_mask(3, (6, 8), 0.5, 2, generator=torch.Generator().manual_seed(5))
    cells = random_mask(3, 12, 0.5, generator=torch.Generator().manual_seed(5)).mask
    for b in range(3):
        for h in range(6):
            for w in range(8):
                assert mask.mask[b, h * 8 + w] == cells[b, (h // 2) * 4 + w // 2]


def test_cell_mask_tiles_each_time_step_of_a_video_grid():
    mask = random_cell_mask(32, (3, 4, 4), 0.5, 2, generator=torch.Generator().manual_seed(0))
    _check_partition(mask, 48, 24)
    per_step = mask.mask.view(32, 3, 16)
    for t in range(3):
        assert set(cell_sums(per_step[:, t], (4, 4), 2).unique().tolist()) <= {0, 4}
    assert not torch.equal(per_step[:, 0], per_step[:, 1])  # time steps are not tubes


def test_cell_mask_seeded_determinism_variety_and_uniformity():
    masking = RandomMasking(0.65, cell_size=2)
    a = masking(8, (14, 14), generator=torch.Generator().manual_seed(3))
    b = masking(8, (14, 14), generator=torch.Generator().manual_seed(3))
    c = masking(8, (14, 14), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)
    assert not torch.equal(a.mask, c.mask)
    assert len({tuple(row.tolist()) for row in a.ids_keep}) == 8  # samples differ
    rate = masking(4000, (4, 4), generator=torch.Generator().manual_seed(0)).mask.float().mean(0)
    assert torch.allclose(rate, torch.full_like(rate, 0.75), atol=0.03)  # 3 of 4 cells


def test_cell_size_one_is_random_mask_draw_for_draw():
    old = random_mask(6, 196, 0.75, generator=torch.Generator().manual_seed(9))
    for new in (
        RandomMasking(0.75)(6, (14, 14), generator=torch.Generator().manual_seed(9)),
        random_cell_mask(6, (14, 14), 0.75, 1, generator=torch.Generator().manual_seed(9)),
    ):
        for field in ("ids_keep", "ids_masked", "mask"):
            assert torch.equal(getattr(new, field), getattr(old, field))


@pytest.mark.parametrize("grid", [(15, 14), (14, 15), (7, 7), (196,)])
def test_cell_mask_rejects_grids_the_cells_cannot_tile(grid):
    masking = RandomMasking(0.65, cell_size=2)
    with pytest.raises(ValueError, match="cell"):
        masking(2, grid)
    with pytest.raises(ValueError, match="cell"):
        masking.num_visible(grid)
    with pytest.raises(ValueError, match="cell_size"):
        RandomMasking(0.65, cell_size=0)


@pytest.mark.parametrize("grid,ratio", [((14, 14), 0.5), ((8, 8), 0.4), ((16, 16), 0.75)])
def test_block_mask_exact_count(grid, ratio):
    mask = block_mask(32, grid, ratio, generator=torch.Generator().manual_seed(0))
    num_tokens = grid[0] * grid[1]
    _check_partition(mask, num_tokens, num_tokens - int(num_tokens * (1 - ratio)))


def test_block_mask_is_blocky():
    """Block masks have far more masked neighbours than random masks of the same ratio."""

    def neighbour_agreement(m):
        grid = m.mask.view(-1, 14, 14).float()
        right = (grid[:, :, 1:] * grid[:, :, :-1]).sum()
        down = (grid[:, 1:] * grid[:, :-1]).sum()
        return float((right + down) / grid.sum())

    gen = torch.Generator().manual_seed(0)
    blocky = neighbour_agreement(block_mask(64, (14, 14), 0.5, generator=gen))
    scattered = neighbour_agreement(random_mask(64, 196, 0.5, generator=gen))
    assert blocky > scattered + 0.4


def test_block_mask_determinism():
    a = BlockMasking(0.5)(4, (14, 14), generator=torch.Generator().manual_seed(1))
    b = BlockMasking(0.5)(4, (14, 14), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.mask, b.mask)


def test_generator_objects_and_visible_count():
    masking = RandomMasking(0.75)
    assert masking.num_visible((14, 14)) == 49
    mask = masking(3, (14, 14))
    assert mask.num_keep == 49 and mask.num_masked == 147
    with pytest.raises(ValueError, match="mask_ratio"):
        RandomMasking(1.0)
    with pytest.raises(ValueError, match="2D grid"):
        BlockMasking(0.5)(2, (2, 4, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_masks_are_made_on_device():
    gen = torch.Generator(device="cuda").manual_seed(0)
    for mask in (
        random_mask(4, 196, 0.75, generator=gen),
        block_mask(4, (14, 14), 0.5, generator=gen),
        random_cell_mask(4, (14, 14), 0.65, cell_size=2, generator=gen),
        color_mask(4, (14, 14), 0.75, "green", generator=gen),
        tube_mask(4, (8, 14, 14), 0.9, generator=gen),
    ):
        assert mask.mask.is_cuda and mask.ids_keep.is_cuda
