"""Skipping NaN/inf optimizer steps without a device-to-host sync per step."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["NonfiniteGuard", "accepts_found_inf"]


def accepts_found_inf(optimizer: Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` flag (PyTorch's fused optimizers)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class NonfiniteGuard:
    """Finds non-finite steps on the device and makes the fused optimizer skip them.

    Per optimizer step: the losses seen since the last step and the gradients' total
    norm give a 0/1 flag (max-reduced over ranks, so every rank skips together, even
    when FSDP shards the gradients); the flag is handed to the optimizer as
    ``found_inf``, which leaves weights, moments and step counts untouched when it is
    1, as under ``GradScaler``. Streak counters stay on the device until :meth:`read`.

    Args:
        device: where the counters live (the module's device).
    """

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), device=device)
        self.streak, self.worst, self.skipped = zero.clone(), zero.clone(), zero.clone()
        self._loss_flag: Tensor | None = None

    def observe_loss(self, loss: Tensor) -> None:
        """Records whether a micro-batch's loss is finite (no sync)."""
        flag = (~torch.isfinite(loss.detach()).all()).float()
        self._loss_flag = flag if self._loss_flag is None else torch.maximum(self._loss_flag, flag)

    def before_step(self, optimizer: Optimizer) -> None:
        """Sets ``optimizer.found_inf`` from the loss and gradients, and counts the step."""
        grads = [
            p.grad
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        found = torch.zeros((), device=self.streak.device)
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
            found = (~torch.isfinite(norm)).float().to(found.device)
        if self._loss_flag is not None:
            found = torch.maximum(found, self._loss_flag)
            self._loss_flag = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(found, op=dist.ReduceOp.MAX)
        optimizer.found_inf = found
        self.streak = (self.streak + found) * found
        self.worst = torch.maximum(self.worst, self.streak)
        self.skipped = self.skipped + found

    def read(self) -> tuple[int, int]:
        """``(longest streak since the last read, steps skipped in total)``; syncs once."""
        worst, skipped = torch.stack([self.worst, self.skipped]).tolist()
        self.worst = self.streak.clone()
        return int(worst), int(skipped)
