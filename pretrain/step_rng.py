"""Random streams of the training step: one per rank and step, whatever the history.

``seed_everything`` gives every rank the same seed, so without this every GPU would draw
the same masks, drop-path patterns and mixup boxes at every step (the reference code
seeds each rank with ``seed + rank``). Seeding the global generators at the start of
each training batch from ``(run seed, rank, optimizer step, micro-batch)`` gives each
rank its own stream, and makes the step's randomness a function of where the run is, so
a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_step", "step_seed"]


def step_seed(run_seed: int, rank: int, step: int, micro_batch: int) -> int:
    """A 64-bit seed mixed (``numpy.random.SeedSequence``) from the four coordinates."""
    words = [run_seed % 2**64, rank, step, micro_batch]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def seed_step(seed: int) -> None:
    """Seeds torch (CPU and every CUDA device), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(np.random.SeedSequence(seed).generate_state(4))
    random.seed(seed)
