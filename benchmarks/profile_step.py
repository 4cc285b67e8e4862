"""Where one MAE training step spends its GPU time: torch.profiler kernel totals.

    python benchmarks/profile_step.py --model B --batch-size 256 [--compile] [--impl hf]

Prints the top CUDA kernels by total time and a coarse split (matmul, attention,
elementwise/norm, optimizer, other) of the profiled steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_throughput as pt  # noqa: E402

GROUPS = [
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "ampere_", "sm80_")),
    ("attention", ("flash", "fmha", "attention", "efficient")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("norm", ("layer_norm", "layernorm", "welford")),
    ("gather/sort/scatter", ("gather", "scatter", "sort", "index", "radix")),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="B")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--impl", default="mimkit", choices=["mimkit", "hf"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    device = torch.device("cuda")
    v = pt.Variant(args.impl, "sdpa", args.compile)
    pt.build_variant(v, pt.resolve_model(args.model), device, "default")
    x = torch.randn(args.batch_size, 3, 224, 224, device=device)
    for _ in range(3):
        pt.train_step(v, x, torch.bfloat16, device, False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            pt.train_step(v, x, torch.bfloat16, device, False)
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            kernels.setdefault(e.name, [0.0, 0])
            kernels[e.name][0] += e.time_range.elapsed_us()
            kernels[e.name][1] += 1
    total = sum(t for t, _ in kernels.values())
    split: dict[str, float] = {}
    for name, (t, _) in kernels.items():
        low = name.lower()
        group = next((g for g, keys in GROUPS if any(k in low for k in keys)), "elementwise/other")
        split[group] = split.get(group, 0.0) + t
    print(
        f"{args.impl} {args.model} batch {args.batch_size} compile={args.compile}: "
        f"{total / args.steps / 1e3:.1f} ms GPU kernel time per step, {len(kernels)} distinct kernels, "
        f"{sum(c for _, c in kernels.values()) // args.steps} launches per step"
    )
    for g, t in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {g:22s} {t / args.steps / 1e3:7.2f} ms  {100 * t / total:5.1f}%")
    print("top kernels (ms per step, launches per step):")
    for name, (t, c) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {t / args.steps / 1e3:7.3f}  {c // args.steps:4d}  {name[:110]}")


if __name__ == "__main__":
    main()
