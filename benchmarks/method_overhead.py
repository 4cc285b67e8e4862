"""Step throughput, FLOPs and MFU of MAE, CAE, CMAE and ViC-MAE at one encoder size.

    python benchmarks/method_overhead.py --device cpu --batch-size 8 --steps 6 [--json out.json]
    python benchmarks/method_overhead.py --device cuda --batch-size 128 --precision bf16

Each method is built from its ImageNet recipe (``recipes/pretrain/*_in1k.yaml``: the
paper's decoder, regressor, projector and masking settings) with the recipe's ViT-B/16
encoder; only the attention backend is set (``math`` for the FLOP count, ``sdpa`` for
timing). One step is ``compute_loss`` on a fixed random batch (two views for the
contrastive methods: the image and a copy shifted by 8 pixels), ``backward``, AdamW, and
the method's EMA update where it has one. Methods are timed in interleaved rounds (order
rotated), the median round giving the step time. FLOPs are counted per sample with
``torch.utils.flop_counter`` (forward + backward, float32); MFU is over the peak that
``pretrain_throughput.py`` uses (a matmul rate measured in the same run on the CPU, the
datasheet on CUDA). The table gives images/s, TFLOP/s, MFU and each method's step time
over MAE's.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import cuda_peak, measure_matmul_tflops, sync  # noqa: E402
from results_file import write_results  # noqa: E402

from mimkit.cli import not_an_advert  # noqa: E402
from mimkit.pretrain.base import ema_update  # noqa: E402
from mimkit.pretrain_cli import PretrainCLI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "MAE": "mae_vit_base_patch16_in1k.yaml",
    "CAE": "cae_vit_base_patch16_in1k.yaml",
    "CMAE": "cmae_vit_base_patch16_in1k.yaml",
    "ViC-MAE": "vicmae_vit_base_patch16_in1k.yaml",
}


def build(method: str, backend: str) -> torch.nn.Module:
    args = [
        "--config", str(ROOT / "recipes/pretrain" / RECIPES[method]),
        "--data", "mimkit.data.Synthetic", "--data.img_size", "224",
        "--model.encoder.init_args.attn_backend", backend,
    ]  # fmt: skip
    text = (ROOT / "recipes/pretrain" / RECIPES[method]).read_text()
    if "compile_modules" in text:
        args += ["--model.compile_modules", "false"]
    torch.manual_seed(0)
    with warnings.catch_warnings():  # the CLI's Trainer is never used: no SLURM hints
        warnings.filterwarnings("ignore", message=".*srun.*")
        return PretrainCLI(args=args, run=False).model


def make_batch(batch_size: int, device: torch.device) -> dict:
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    return {"pixels": x, "views": [x, x.roll(8, dims=-1)]}


def step_fn(model, batch, optimizer, autocast):
    def step() -> None:
        with autocast:
            loss = model.compute_loss(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for online, target in model.momentum_pairs():
            ema_update(online, target, 0.996)

    return step


def flops_per_sample(method: str, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model = build(method, "math").to(device).train()
    counter = FlopCounterMode(display=False)
    with counter:  # batch 2: the projectors' BatchNorm needs more than one sample
        model.compute_loss(make_batch(2, device))["loss"].backward()
    return int(counter.get_total_flops()) // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (one step each)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(not_an_advert)
    device = torch.device(args.device)
    bf16 = args.precision == "bf16"
    if device.type == "cuda":
        peak, peak_note = cuda_peak(device, args.precision)
    else:
        dtype = torch.bfloat16 if bf16 else torch.float32
        peak = measure_matmul_tflops(device, dtype, 2048, 5)
        peak_note = f"cpu {args.precision} matmul measured {peak:.3f} TFLOP/s"
    flops = {m: flops_per_sample(m, device) for m in args.methods}
    steps, models = {}, {}
    batch = make_batch(args.batch_size, device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=bf16)
    for method in args.methods:
        model = build(method, "sdpa").to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
        models[method] = step_fn(model, batch, optimizer, autocast)
        for _ in range(args.warmup):
            models[method]()
        steps[method] = []
    sync(device)
    for round_ in range(args.steps):
        order = (
            args.methods[round_ % len(args.methods) :] + args.methods[: round_ % len(args.methods)]
        )
        for method in order:
            start = time.perf_counter()
            models[method]()
            sync(device)
            steps[method].append(time.perf_counter() - start)
    base = statistics.median(steps[args.methods[0]])
    rows = []
    for method in args.methods:
        step = statistics.median(steps[method])
        tflops = flops[method] * args.batch_size / step / 1e12
        rows.append(
            {
                "method": method,
                "images_per_s": args.batch_size / step,
                "gflop_per_image": flops[method] / 1e9,
                "tflop_per_s": tflops,
                "mfu": tflops / peak if peak else None,
                "step_vs_first": step / base,
            }
        )
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{device_name}, {args.precision}, batch {args.batch_size}, ViT-B/16; {peak_note}")
    print(
        "| method | images/s | GFLOP/image | TFLOP/s | MFU | step time vs " + args.methods[0] + " |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(
            f"| {r['method']} | {r['images_per_s']:.2f} | {r['gflop_per_image']:.1f} | "
            f"{r['tflop_per_s']:.3f} | {mfu} | {r['step_vs_first']:.2f}x |"
        )
    if args.json:
        meta = {"device": device_name, "precision": args.precision, "batch": args.batch_size}
        write_results(args.json, {**meta, "peak": peak_note, "rows": rows})


if __name__ == "__main__":
    main()
