"""InfoNCE with negatives gathered across DDP ranks (CMAE, ViC-MAE)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gather_with_grad", "info_nce", "world_rank"]


def world_rank() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the summed gradient of its shard.

    Every rank's loss depends on every shard, so the gradient of a shard is the sum
    over ranks of the gradients flowing into it: an all-reduce, then this rank's slice.
    Works on any backend that has ``all_gather`` and ``all_reduce`` (gloo, NCCL).
    """

    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        world, rank = world_rank()
        ctx.rank, ctx.batch = rank, local.shape[0]
        shards = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(shards, local.contiguous())
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def gather_with_grad(local: Tensor) -> Tensor:
    """``(B, D) -> (world * B, D)``, rank order, differentiable; identity without DDP.

    Every rank must pass the same ``B`` (``drop_last=True`` loaders guarantee it).
    """
    if world_rank()[0] == 1:
        return local
    return _GatherWithGrad.apply(local)


def _local(features: Tensor) -> Tensor:
    return features


def info_nce(
    query: Tensor,
    key: Tensor,
    temperature: float,
    symmetric: bool = False,
    intra_view_negatives: bool = False,
    gather: bool = True,
) -> Tensor:
    """InfoNCE: query ``i`` must pick key ``i`` among the keys of the whole global batch.

    Features are L2-normalized; keys (and, with ``intra_view_negatives``, queries) are
    gathered from every DDP rank with gradients flowing back to the local shard, so
    the loss averaged over ranks equals the single-process loss on the global batch.
    Detach ``key`` beforehand for a stop-gradient target branch (CMAE).

    Args:
        query: ``(B, D)`` local queries.
        key: ``(B, D)`` local keys; ``key[i]`` is the positive of ``query[i]``.
        temperature: softmax temperature ``tau``.
        symmetric: also score keys against queries and average both directions.
        intra_view_negatives: the other queries of the global batch are negatives too
            (SimCLR's 2N - 2 negatives, as in ViC-MAE); a sample is never its own negative.
        gather: take negatives from every rank. Validation passes ``False``: its loaders
            (shard streams above all) may give ranks unequal batch counts or sizes, where a
            collective would hang, so it scores each rank's batch on its own.

    Returns:
        Scalar mean cross-entropy over the local queries (and keys when symmetric).
    """
    query = F.normalize(query.float(), dim=-1)
    key = F.normalize(key.float(), dim=-1)
    share = gather_with_grad if gather else _local
    all_keys = share(key)
    all_queries = share(query) if (symmetric or intra_view_negatives) else None
    rank = world_rank()[1] if gather else 0
    labels = torch.arange(query.shape[0], device=query.device) + rank * query.shape[0]

    def one_way(q: Tensor, others: Tensor, same_view: Tensor | None) -> Tensor:
        logits = q @ others.T / temperature  # (B, world * B)
        if intra_view_negatives and same_view is not None:
            own = q @ same_view.T / temperature  # (B, world * B), own sample on the "diagonal"
            own = own.masked_fill(F.one_hot(labels, own.shape[1]).bool(), float("-inf"))
            logits = torch.cat([logits, own], dim=1)
        return F.cross_entropy(logits, labels)

    # float32 scores even under autocast: at tau = 0.07 the logits reach 14, where bf16
    # steps by 0.06 (a few percent of gradient error); the matrices are only B x world * B
    with torch.autocast(query.device.type, enabled=False):
        loss = one_way(query, all_keys, all_queries)
        if symmetric:
            loss = 0.5 * (loss + one_way(key, all_queries, all_keys))
    return loss
