"""Token masking for masked image and video modeling.

Every generator returns a :class:`Mask` whose samples all keep exactly the same
number of visible tokens, so the encoder can run on a dense ``(B, N_keep, D)``
tensor with one gather. Masks are made on the requested device from an optional
seeded :class:`torch.Generator`; no Python loop runs over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Mask",
    "MaskGenerator",
    "RandomMasking",
    "BlockMasking",
    "mask_from_scores",
    "random_mask",
    "random_cell_mask",
    "block_mask",
    "tube_mask",
    "running_cell_mask",
    "dual_mask_queries",
    "TubeMasking",
    "RunningCellMasking",
]


@dataclass(frozen=True)
class Mask:
    """A batch of masks over ``N`` tokens.

    Attributes:
        ids_keep: ``(B, N_keep)`` indices of visible tokens, ascending.
        ids_masked: ``(B, N_mask)`` indices of masked tokens, ascending.
        mask: ``(B, N)`` bool, ``True`` where the token is masked.
    """

    ids_keep: Tensor
    ids_masked: Tensor
    mask: Tensor

    @property
    def num_keep(self) -> int:
        return self.ids_keep.shape[1]

    @property
    def num_masked(self) -> int:
        return self.ids_masked.shape[1]

    @property
    def ids_restore(self) -> Tensor:
        """``(B, N)`` positions that put ``cat([kept, masked], 1)`` back in token order."""
        return torch.argsort(torch.cat([self.ids_keep, self.ids_masked], dim=1), dim=1)


def mask_from_scores(scores: Tensor, num_masked: int) -> Mask:
    """Masks the ``num_masked`` highest-scoring tokens of each sample.

    Args:
        scores: ``(B, N)`` float; ties are broken by sort order.
        num_masked: how many tokens to mask in every sample.
    """
    batch, num_tokens = scores.shape
    if not 0 <= num_masked < num_tokens:
        raise ValueError(f"num_masked must be in [0, {num_tokens}), got {num_masked}")
    order = torch.argsort(scores, dim=1, descending=True)
    ids_masked = order[:, :num_masked].sort(dim=1).values
    ids_keep = order[:, num_masked:].sort(dim=1).values
    mask = torch.zeros(batch, num_tokens, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, ids_masked, True)
    return Mask(ids_keep=ids_keep, ids_masked=ids_masked, mask=mask)


def num_masked_tokens(num_tokens: int, mask_ratio: float) -> int:
    """Number of masked tokens for a ratio, as in MAE: ``N - int(N * (1 - ratio))``."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return num_tokens - int(num_tokens * (1.0 - mask_ratio))


def random_mask(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Mask:
    """Uniform random masking (MAE): every sample masks the same number of tokens.

    Args:
        batch_size: ``B``.
        num_tokens: ``N``.
        mask_ratio: fraction of tokens to mask.
        device: where the mask is made (the generator's device when one is given).
        generator: optional seeded generator.
    """
    if generator is not None:
        device = generator.device
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    return mask_from_scores(noise, num_masked_tokens(num_tokens, mask_ratio))


def cell_grid_size(grid_size: tuple[int, ...], cell_size: int) -> tuple[int, ...]:
    """The grid of ``cell x cell`` cells: ``(..., H, W) -> (..., H / cell, W / cell)``.

    Cells tile the last two axes only; leading axes (time) are kept as they are.

    Raises:
        ValueError: ``cell_size < 1``, or ``H`` or ``W`` not divisible by it.
    """
    if cell_size < 1:
        raise ValueError(f"cell_size must be >= 1, got {cell_size}")
    if cell_size == 1:
        return tuple(grid_size)
    if len(grid_size) < 2:
        raise ValueError(f"cell_size {cell_size} needs an (..., H, W) grid, got {tuple(grid_size)}")
    *lead, height, width = grid_size
    if height % cell_size or width % cell_size:
        raise ValueError(
            f"token grid {tuple(grid_size)} is not divisible into {cell_size}x{cell_size} "
            f"cells: H={height} and W={width} must both be multiples of {cell_size}"
        )
    return (*lead, height // cell_size, width // cell_size)


def expand_cells(cells: Tensor, grid_size: tuple[int, ...], cell_size: int) -> Tensor:
    """Copies each cell's value onto its ``cell x cell`` tokens.

    Args:
        cells: ``(B, L * H/c * W/c)``, cells numbered row-major over ``cell_grid_size``.
        grid_size: ``(..., H, W)`` token grid, ``L`` the product of the leading axes.
        cell_size: ``c``.

    Returns:
        ``(B, L * H * W)`` in token order ``l * H * W + h * W + w``.
    """
    height, width = grid_size[-2:]
    rows, cols = height // cell_size, width // cell_size
    grouped = cells.view(cells.shape[0], -1, rows, 1, cols, 1)
    return grouped.expand(-1, -1, -1, cell_size, -1, cell_size).reshape(cells.shape[0], -1)


def random_cell_mask(
    batch_size: int,
    grid_size: tuple[int, ...],
    mask_ratio: float,
    cell_size: int = 2,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Mask:
    """Random masking of aligned ``cell x cell`` groups of tokens (CMAE uses 2 x 2).

    MAE's count rule is applied to the cells, ``num_masked_tokens(C, mask_ratio)`` of the
    ``C = N / cell**2`` cells are masked, and every cell is then entirely masked or entirely
    visible. For ``cell_size=1`` this is :func:`random_mask`, draw for draw.

    Args:
        batch_size: ``B``.
        grid_size: ``(..., H, W)`` token grid; cells tile ``(H, W)``, tokens are numbered
            row-major (``h * W + w`` in 2D).
        mask_ratio: fraction of cells (so of tokens) to mask.
        cell_size: side of the square cell; must divide ``H`` and ``W``.
        device: where the mask is made (the generator's device when one is given).
        generator: optional seeded generator.
    """
    cells = cell_grid_size(grid_size, cell_size)
    cell_mask = random_mask(batch_size, math.prod(cells), mask_ratio, device, generator)
    if cell_size == 1:
        return cell_mask
    hidden = expand_cells(cell_mask.mask, grid_size, cell_size)
    return mask_from_scores(hidden.float(), cell_mask.num_masked * cell_size**2)


def block_mask(
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    min_block_tokens: int = 16,
    max_block_tokens: int | None = None,
    min_aspect: float = 0.3,
    max_attempts: int = 64,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Mask:
    """Block-wise masking (BEiT / CAE) with an exact masked count.

    Rectangles with area in ``[min_block_tokens, max_block_tokens]`` and log-uniform
    aspect ratio in ``[min_aspect, 1 / min_aspect]`` are painted, all samples in
    parallel, while they keep the sample at or under its budget. The remainder of
    the budget is then filled with random tokens so that every sample masks exactly
    ``num_masked_tokens(H * W, mask_ratio)`` tokens.

    Args:
        batch_size: ``B``.
        grid_size: ``(H, W)`` token grid.
        mask_ratio: fraction of tokens to mask.
        min_block_tokens: smallest block area, in tokens.
        max_block_tokens: largest block area (defaults to the budget).
        min_aspect: smallest block aspect ratio.
        max_attempts: rounds of block proposals.
        device: where the mask is made (the generator's device when one is given).
        generator: optional seeded generator.
    """
    if generator is not None:
        device = generator.device
    height, width = grid_size
    num_tokens = height * width
    budget = num_masked_tokens(num_tokens, mask_ratio)
    max_block_tokens = budget if max_block_tokens is None else max_block_tokens
    min_block_tokens = min(min_block_tokens, max(budget, 1))
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))

    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    painted = torch.zeros(batch_size, height, width, dtype=torch.bool, device=device)

    def uniform(low: float, high: float) -> Tensor:
        u = torch.rand(batch_size, device=device, generator=generator)
        return low + (high - low) * u

    for _ in range(max_attempts if budget > 0 else 0):
        area = uniform(min_block_tokens, max(max_block_tokens, min_block_tokens))
        aspect = torch.exp(uniform(*log_aspect))
        block_h = torch.sqrt(area * aspect).round().long().clamp(1, height)
        block_w = torch.sqrt(area / aspect).round().long().clamp(1, width)
        top = (uniform(0, 1) * (height - block_h + 1).float()).long()
        left = (uniform(0, 1) * (width - block_w + 1).float()).long()
        block = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + block_h).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + block_w).view(-1, 1, 1))
        )
        candidate = painted | block
        fits = candidate.flatten(1).sum(1) <= budget
        painted = torch.where(fits.view(-1, 1, 1), candidate, painted)
        if bool((painted.flatten(1).sum(1) >= budget).all()):
            break

    # Painted tokens score in [1, 2), the rest in [0, 1): painted ones are masked first.
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    return mask_from_scores(painted.flatten(1).float() + noise, budget)


class MaskGenerator:
    """Base class for configurable mask generators (``class_path`` in recipes)."""

    mask_ratio: float

    def __call__(
        self,
        batch_size: int,
        grid_size: tuple[int, ...],
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Mask:
        raise NotImplementedError

    def num_visible(self, grid_size: tuple[int, ...]) -> int:
        """Visible tokens per sample for a grid, constant for a configuration."""
        num_tokens = math.prod(grid_size)
        return num_tokens - num_masked_tokens(num_tokens, self.mask_ratio)


class RandomMasking(MaskGenerator):
    """Uniform random masking (MAE, MAE-ST space-time random; CMAE with 2 x 2 cells).

    With ``cell_size > 1`` the mask is drawn over aligned ``cell x cell`` groups of
    tokens in ``(H, W)`` (see :func:`random_cell_mask`); the grid must divide evenly.

    Args:
        mask_ratio: fraction of tokens (cells) to mask.
        cell_size: side of the square cell masked as one unit (1: single tokens).
    """

    def __init__(self, mask_ratio: float = 0.75, cell_size: int = 1) -> None:
        num_masked_tokens(1, mask_ratio)
        if cell_size < 1:
            raise ValueError(f"cell_size must be >= 1, got {cell_size}")
        self.mask_ratio = mask_ratio
        self.cell_size = cell_size

    def __call__(self, batch_size, grid_size, device=None, generator=None) -> Mask:
        return random_cell_mask(
            batch_size, tuple(grid_size), self.mask_ratio, self.cell_size, device, generator
        )

    def num_visible(self, grid_size: tuple[int, ...]) -> int:
        num_cells = math.prod(cell_grid_size(grid_size, self.cell_size))
        visible_cells = num_cells - num_masked_tokens(num_cells, self.mask_ratio)
        return visible_cells * self.cell_size**2

    def __repr__(self) -> str:
        return f"RandomMasking(mask_ratio={self.mask_ratio}, cell_size={self.cell_size})"


class BlockMasking(MaskGenerator):
    """Block-wise masking as in BEiT and CAE.

    Args:
        mask_ratio: fraction of tokens to mask (CAE uses about 0.5).
        min_block_tokens: smallest block area in tokens (BEiT: 16).
        max_block_tokens: largest block area (``None``: the whole budget).
        min_aspect: smallest aspect ratio of a block (BEiT: 0.3).
    """

    def __init__(
        self,
        mask_ratio: float = 0.5,
        min_block_tokens: int = 16,
        max_block_tokens: int | None = None,
        min_aspect: float = 0.3,
    ) -> None:
        num_masked_tokens(1, mask_ratio)
        self.mask_ratio = mask_ratio
        self.min_block_tokens = min_block_tokens
        self.max_block_tokens = max_block_tokens
        self.min_aspect = min_aspect

    def __call__(self, batch_size, grid_size, device=None, generator=None) -> Mask:
        if len(grid_size) != 2:
            raise ValueError(f"BlockMasking needs a 2D grid, got {tuple(grid_size)}")
        return block_mask(
            batch_size,
            (grid_size[0], grid_size[1]),
            self.mask_ratio,
            self.min_block_tokens,
            self.max_block_tokens,
            self.min_aspect,
            device=device,
            generator=generator,
        )

    def __repr__(self) -> str:
        return (
            f"BlockMasking(mask_ratio={self.mask_ratio}, min_block_tokens={self.min_block_tokens})"
        )


def tube_mask(
    batch_size: int,
    grid_size: tuple[int, int, int],
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Mask:
    """Tube masking (VideoMAE): one random spatial mask shared by every time step.

    Each sample masks ``int(mask_ratio * H * W)`` spatial positions (VideoMAE's
    ``TubeMaskingGenerator`` count, one fewer than MAE's rule at some ratios), and the same
    positions in all ``T`` time steps, so ``T`` times that many tokens. The positions are
    the highest of ``H * W`` noise values drawn per sample, chosen over space before they
    are copied to every time step, so tied noise values cannot split a tube.

    Args:
        batch_size: ``B``.
        grid_size: ``(T, H, W)`` token grid; tokens are numbered ``t * H * W + h * W + w``.
        mask_ratio: fraction of tokens to mask.
        device: where the mask is made (the generator's device when one is given).
        generator: optional seeded generator.
    """
    if generator is not None:
        device = generator.device
    frames, height, width = grid_size
    noise = torch.rand(batch_size, height * width, device=device, generator=generator)
    per_frame = tube_masked_per_frame(height * width, mask_ratio)
    spatial = mask_from_scores(noise, per_frame).mask
    hidden = spatial.unsqueeze(1).expand(-1, frames, -1).reshape(batch_size, -1)
    return mask_from_scores(hidden.float(), per_frame * frames)


def tube_masked_per_frame(spatial_tokens: int, mask_ratio: float) -> int:
    """Masked positions per frame of a tube mask, as VideoMAE: ``int(ratio * H * W)``."""
    num_masked_tokens(1, mask_ratio)  # validates the ratio
    return int(mask_ratio * spatial_tokens)


def running_cell_mask(
    batch_size: int,
    grid_size: tuple[int, int, int],
    mask_ratio: float = 0.5,
    cell_size: int = 2,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Mask:
    """Running-cell masking (VideoMAE V2's decoder mask).

    The spatial grid is tiled with ``cell_size x cell_size`` cells of ``n`` positions,
    numbered row-major inside a cell. In time step ``t`` position ``i`` of every cell is
    visible when ``(i - t - s) mod n < v`` with ``v = n - round(n * mask_ratio)`` and a
    random offset ``s`` per sample, so the visible positions run through the cell over
    time and each position is visible in ``v`` of any ``n`` consecutive steps. The count is
    made exact, ``num_masked_tokens(N, mask_ratio)`` for every sample, by ranking the
    tokens (pattern first, then random), which reproduces the pattern exactly when the
    grid is a whole number of cells.

    Args:
        batch_size: ``B``.
        grid_size: ``(T, H, W)`` token grid.
        mask_ratio: fraction of tokens hidden from the decoder (0.5 in VideoMAE V2).
        cell_size: side of the square cell (2 in VideoMAE V2).
        device: where the mask is made (the generator's device when one is given).
        generator: optional seeded generator.
    """
    if generator is not None:
        device = generator.device
    frames, height, width = grid_size
    cell = cell_size * cell_size
    visible = cell - round(cell * mask_ratio)
    t = torch.arange(frames, device=device).view(1, frames, 1, 1)
    h = torch.arange(height, device=device).view(1, 1, height, 1)
    w = torch.arange(width, device=device).view(1, 1, 1, width)
    offset = torch.randint(cell, (batch_size, 1, 1, 1), device=device, generator=generator)
    in_cell = (h % cell_size) * cell_size + (w % cell_size)
    hidden = (in_cell - t - offset).remainder(cell) >= visible  # (B, T, H, W)
    noise = torch.rand(batch_size, frames * height * width, device=device, generator=generator)
    scores = hidden.flatten(1).float() + 0.5 * noise
    return mask_from_scores(scores, num_masked_tokens(frames * height * width, mask_ratio))


def dual_mask_queries(encoder_mask: Mask, decoder_mask: Mask) -> tuple[Tensor, Tensor]:
    """Decoder queries and scored tokens under dual masking (VideoMAE V2).

    As VideoMAE V2's code: the decoder gets one mask token at every position its own mask
    leaves visible (next to the visible latents), and the loss scores only those of them
    that the encoder masked. Decoder-visible positions that the encoder saw are decoded
    too but not scored.

    Args:
        encoder_mask: the encoder's mask over ``N`` tokens.
        decoder_mask: the decoder's mask over the same ``N`` tokens.

    Returns:
        ``(B, K)`` ascending decoder-visible token indices (``K`` is the decoder mask's
        visible count) and ``(B, K)`` bool, true where the encoder masked the token.
    """
    ids_query = decoder_mask.ids_keep
    return ids_query, encoder_mask.mask.gather(1, ids_query)


class TubeMasking(MaskGenerator):
    """Tube masking over a ``(T, H, W)`` grid (VideoMAE): the same spatial mask in every frame.

    Args:
        mask_ratio: fraction of tokens to mask (0.9 in VideoMAE).
    """

    def __init__(self, mask_ratio: float = 0.9) -> None:
        num_masked_tokens(1, mask_ratio)
        self.mask_ratio = mask_ratio

    def __call__(self, batch_size, grid_size, device=None, generator=None) -> Mask:
        if len(grid_size) != 3:
            raise ValueError(f"TubeMasking needs a (T, H, W) grid, got {tuple(grid_size)}")
        return tube_mask(batch_size, tuple(grid_size), self.mask_ratio, device, generator)

    def num_visible(self, grid_size: tuple[int, ...]) -> int:
        frames, spatial = grid_size[0], math.prod(grid_size[1:])
        return frames * (spatial - tube_masked_per_frame(spatial, self.mask_ratio))

    def __repr__(self) -> str:
        return f"TubeMasking(mask_ratio={self.mask_ratio})"


class RunningCellMasking(MaskGenerator):
    """Running-cell masking over a ``(T, H, W)`` grid (VideoMAE V2 decoder masking).

    Args:
        mask_ratio: fraction of tokens hidden from the decoder (0.5 in VideoMAE V2).
        cell_size: side of the square cell (2).
    """

    def __init__(self, mask_ratio: float = 0.5, cell_size: int = 2) -> None:
        num_masked_tokens(1, mask_ratio)
        if cell_size < 1:
            raise ValueError(f"cell_size must be >= 1, got {cell_size}")
        self.mask_ratio = mask_ratio
        self.cell_size = cell_size

    def __call__(self, batch_size, grid_size, device=None, generator=None) -> Mask:
        if len(grid_size) != 3:
            raise ValueError(f"RunningCellMasking needs a (T, H, W) grid, got {tuple(grid_size)}")
        return running_cell_mask(
            batch_size, tuple(grid_size), self.mask_ratio, self.cell_size, device, generator
        )

    def __repr__(self) -> str:
        return f"RunningCellMasking(mask_ratio={self.mask_ratio}, cell_size={self.cell_size})"
