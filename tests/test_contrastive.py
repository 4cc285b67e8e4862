"""InfoNCE against explicit formulas, and across 2 gloo processes against one process."""

import importlib.util
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CONTRASTIVE_SOURCE = Path(__file__).resolve().parents[1] / "pretrain" / "contrastive.py"


def load_info_nce():
    """``info_nce`` from its source file, which imports only torch.

    Spawned workers re-import this test module; loading the file directly spares them
    importing the whole package (timm, Lightning), which dominates a spawn on CPU.
    """
    spec = importlib.util.spec_from_file_location("mimkit_contrastive", CONTRASTIVE_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.info_nce


def info_nce(*args, **kwargs):
    from mimkit.pretrain import info_nce as package_info_nce

    return package_info_nce(*args, **kwargs)


def reference_one_way(query, key, tau):
    """-log(exp(s_ii / tau) / sum_j exp(s_ij / tau)), one query at a time."""
    total = 0.0
    for i in range(query.shape[0]):
        q = query[i] / query[i].norm()
        scores = [math.exp(float(q @ (k / k.norm())) / tau) for k in key]
        total += -math.log(scores[i] / sum(scores))
    return total / query.shape[0]


def reference_simclr(z1, z2, tau):
    """NT-Xent over 2B samples: every other sample of both views is a negative."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        pos = math.exp(float(z[i] @ z[partner]) / tau)
        neg = sum(math.exp(float(z[i] @ z[j]) / tau) for j in range(2 * n) if j not in (i, partner))
        total += -math.log(pos / (pos + neg))
    return total / (2 * n)


def test_one_way_info_nce_matches_formula():
    torch.manual_seed(0)
    query, key = torch.randn(6, 5), torch.randn(6, 5)
    loss = info_nce(query, key, 0.07)
    assert loss.item() == pytest.approx(reference_one_way(query, key, 0.07), rel=1e-5)


def test_symmetric_intra_view_info_nce_is_simclr():
    torch.manual_seed(1)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    loss = info_nce(z1, z2, 0.1, symmetric=True, intra_view_negatives=True)
    assert loss.item() == pytest.approx(reference_simclr(z1, z2, 0.1), rel=1e-5)
    # Aligned views give a lower loss than random ones.
    aligned = info_nce(z1, z1 + 0.01 * torch.randn(5, 8), 0.1, True, True)
    assert aligned < loss


def test_mlp_head_layout():
    from mimkit.pretrain import MLPHead

    head = MLPHead(16, 32, 8, num_layers=3)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 32), (32, 8)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head) == 2
    assert head(torch.randn(4, 16)).shape == (4, 8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, z1, z2, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    info_nce = load_info_nce()
    try:
        n = z1.shape[0] // world
        shard = slice(rank * n, (rank + 1) * n)
        results = {}
        for name, kwargs, detach in (
            ("cmae", {}, True),
            ("vicmae", {"symmetric": True, "intra_view_negatives": True}, False),
        ):
            a = z1[shard].clone().requires_grad_(True)
            b = z2[shard].clone().requires_grad_(True)
            loss = info_nce(a, b.detach() if detach else b, 0.1, **kwargs)
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[name] = {
                "loss": mean_loss / world,
                "grad_a": a.grad,
                "grad_b": b.grad if b.grad is not None else torch.zeros_like(b),
            }
        # validation: ranks with unequal batches (3 and 4 samples) score locally, no collective
        local = slice(rank * n, rank * n + n - 1 + rank)
        kwargs = {"symmetric": True, "intra_view_negatives": True, "gather": False}
        results["local"] = info_nce(z1[local], z2[local], 0.1, **kwargs)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_gather_loss_and_gradients_equal_single_process(tmp_path):
    """2 ranks x 4 samples == 1 process x 8 samples: the same loss, the same gradients.

    DDP averages gradients over ranks, so a rank's local-shard gradient divided by the
    world size must equal the single-process gradient of that shard.
    """
    torch.manual_seed(2)
    world, batch = 2, 8
    z1, z2 = torch.randn(batch, 6), torch.randn(batch, 6)
    mp.start_processes(
        _worker,
        args=(world, _free_port(), z1, z2, str(tmp_path)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name, kwargs, detach in (
        ("cmae", {}, True),
        ("vicmae", {"symmetric": True, "intra_view_negatives": True}, False),
    ):
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        loss = info_nce(a, b.detach() if detach else b, 0.1, **kwargs)
        loss.backward()
        for r, result in enumerate(ranks):
            torch.testing.assert_close(result[name]["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
            shard = slice(r * batch // world, (r + 1) * batch // world)
            torch.testing.assert_close(result[name]["grad_a"] / world, a.grad[shard])
            if detach:  # the stop-gradient target branch gets nothing, on every rank
                assert b.grad is None and result[name]["grad_b"].abs().sum() == 0
            else:
                torch.testing.assert_close(result[name]["grad_b"] / world, b.grad[shard])
    for r, result in enumerate(ranks):  # the local scores: each rank's batch on its own
        n = batch // world
        local = slice(r * n, r * n + n - 1 + r)
        expected = info_nce(z1[local], z2[local], 0.1, symmetric=True, intra_view_negatives=True)
        torch.testing.assert_close(result["local"], expected)


def test_scores_stay_float32_under_bf16_autocast():
    torch.manual_seed(3)
    query, key = torch.randn(16, 32), torch.randn(16, 32)
    kwargs = {"symmetric": True, "intra_view_negatives": True}
    expected = info_nce(query, key, 0.07, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce(query, key, 0.07, **kwargs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
