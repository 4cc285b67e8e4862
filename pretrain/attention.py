"""Multi-head self-attention with selectable kernels and timm's parameter names.

Backends:
    ``xformers``: ``xformers.ops.memory_efficient_attention`` (CUDA only).
    ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``.
    ``math``: explicit softmax(QK^T / sqrt(d)) V, the reference.
    ``auto``: xformers on CUDA when it imports and runs the inputs, else sdpa.
"""

from __future__ import annotations

import functools
import importlib
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from timm.layers import Attention as TimmAttention
from torch import Tensor, nn

from .errors import BackendUnavailableError

__all__ = [
    "AttentionBackend",
    "BackendAttention",
    "prepare_attention",
    "use_backend",
    "xformers_available",
]

AttentionBackend = Literal["auto", "xformers", "sdpa", "math"]
BACKENDS: tuple[str, ...] = ("auto", "xformers", "sdpa", "math")

_announced: set[str] = set()


def _announce(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        rank_zero_info(message)  # Lightning's logger: shown in every run's output


def _import_xformers_ops():
    try:
        return importlib.import_module("xformers.ops")
    except Exception:  # ImportError, or a broken build raising anything at import
        return None


@functools.cache
def xformers_available() -> bool:
    """True when xformers imports and its kernels run a small bf16 problem on this GPU.

    A wheel built for another torch imports fine but has no usable operator; that
    counts as unavailable.
    """
    ops = _import_xformers_ops()
    if ops is None or not torch.cuda.is_available():
        return False
    try:
        probe = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
        ops.memory_efficient_attention(probe, probe, probe)
        return True
    except Exception as err:
        _announce(f"xformers is installed but cannot run on this GPU ({err})")
        return False


class BackendAttention(nn.Module):
    """Self-attention whose submodules are those of a timm ``Attention``.

    The state dict keys are exactly timm's (``qkv``, ``q_norm``, ``k_norm``,
    ``norm``, ``gate``, ``proj``), so weights move between the two unchanged.

    Args:
        source: the timm attention module whose layers are adopted.
        backend: which kernel computes attention.
    """

    def __init__(self, source: TimmAttention, backend: AttentionBackend = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {BACKENDS}, got {backend!r}")
        self.num_heads = source.num_heads
        self.head_dim = source.head_dim
        self.attn_dim = getattr(source, "attn_dim", source.num_heads * source.head_dim)
        self.scale = source.scale
        self.qkv = source.qkv
        self.q_norm = source.q_norm
        self.k_norm = source.k_norm
        self.attn_drop = source.attn_drop
        self.norm = getattr(source, "norm", nn.Identity())
        gate = getattr(source, "gate", None)
        if gate is not None:
            self.gate = gate
        self.proj = source.proj
        self.proj_drop = source.proj_drop
        self.backend: str = backend
        self._resolved: str | None = None
        if backend == "xformers" and _import_xformers_ops() is None:
            raise BackendUnavailableError(
                "attn_backend='xformers' was requested but xformers is not installed "
                "(pip install 'mimkit[xformers]' on a CUDA machine); "
                "use attn_backend='sdpa' or 'auto' instead."
            )

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, backend={self.backend}"

    def _resolve(self, q: Tensor) -> str:
        """Picks the kernel for these inputs; ``q`` is ``(B, N, H, D)``."""
        if self.backend == "xformers":
            if not q.is_cuda:
                raise BackendUnavailableError(
                    f"attn_backend='xformers' cannot run on {q.device.type} tensors: xformers "
                    "has kernels for CUDA only. Use attn_backend='sdpa' (or 'auto', which "
                    "falls back to sdpa) on this machine."
                )
            if not self._xformers_runs(q, fallback=False):
                raise BackendUnavailableError(
                    "attn_backend='xformers' was requested but xformers has no working operator "
                    f"for {q.dtype} inputs with head size {q.shape[-1]} on this GPU (often a wheel "
                    "built for another torch version). Use attn_backend='sdpa' or 'auto'."
                )
            return "xformers"
        if self.backend != "auto":
            return self.backend
        if q.is_cuda and _import_xformers_ops() is not None and self._xformers_runs(q):
            return "xformers"
        return "sdpa"

    def prepare(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
        """Resolves the backend ahead of the first call (before ``torch.compile``)."""
        probe = torch.zeros(1, 8, self.num_heads, self.head_dim, device=device, dtype=dtype)
        self._resolved = self._resolve(probe)
        _announce(f"attention backend: {self._resolved} (requested {self.backend})")
        return self._resolved

    def _xformers_runs(self, q: Tensor, fallback: bool = True) -> bool:
        try:
            ops = _import_xformers_ops()
            probe = q[:1, :8].detach()
            ops.memory_efficient_attention(probe, probe, probe)
            return True
        except Exception as err:  # no operator for this dtype / head size / GPU
            if fallback:
                _announce(f"xformers cannot run these inputs ({err}); using sdpa")
            return False

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Self-attention over a sequence.

        Args:
            x: ``(B, N, C)``.
            attn_mask: optional mask broadcastable to ``(B, H, N, N)`` (timm's
                ``Block`` passes one through); masked calls always use sdpa.
            is_causal: causal attention (sdpa only).

        Returns:
            ``(B, N, C_out)``.
        """
        batch, tokens, _ = x.shape
        gate = self.gate(x).sigmoid() if hasattr(self, "gate") else None
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # each (B, N, H, D)
        if self._resolved is None:
            self._resolved = self._resolve(q)
            _announce(f"attention backend: {self._resolved} (requested {self.backend})")
        dropout = self.attn_drop.p if self.training else 0.0
        kernel = "sdpa" if attn_mask is not None or is_causal else self._resolved
        if kernel == "xformers":
            q, k = self.q_norm(q), self.k_norm(k)
            out = _import_xformers_ops().memory_efficient_attention(q, k, v, p=dropout)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, N, D)
            q, k = self.q_norm(q), self.k_norm(k)
            if kernel == "sdpa":
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal
                )
            else:
                attn = (q * self.scale) @ k.transpose(-2, -1)
                attn = self.attn_drop(attn.softmax(dim=-1))
                out = attn @ v
            out = out.transpose(1, 2)  # (B, N, H, D)
        out = self.norm(out.reshape(batch, tokens, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def prepare_attention(
    module: nn.Module, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> None:
    """Resolves the backend of every :class:`BackendAttention` in ``module`` now."""
    for child in module.modules():
        if isinstance(child, BackendAttention):
            child.prepare(device, dtype)


def use_backend(module: nn.Module, backend: AttentionBackend) -> int:
    """Replaces every timm ``Attention`` inside ``module`` by a :class:`BackendAttention`.

    Args:
        module: a model built from timm blocks.
        backend: kernel for all replaced layers.

    Returns:
        The number of layers replaced.
    """
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, BackendAttention):
            child.backend, child._resolved = backend, None
            replaced += 1
        elif isinstance(child, TimmAttention):
            setattr(module, name, BackendAttention(child, backend))
            replaced += 1
        else:
            replaced += use_backend(child, backend)
    return replaced
