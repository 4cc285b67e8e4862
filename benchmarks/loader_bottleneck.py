"""Is the loader or the model the bottleneck? Both rates for one recipe, on one device.

    python benchmarks/loader_bottleneck.py --config recipes/pretrain/mae_vit_base_patch16_in1k.yaml \\
        --root /datasets/imagenet/train --workers 8 --device cuda [--decode-on-device] [--json out.json]

It builds the recipe's model and data (``--root`` and ``--batch-size`` replace the
recipe's), then measures

* the workers alone: samples/s the DataLoader workers hand over (what they do per image is
  all that ``--decode-on-device`` moves off the CPU);
* the loader: training batches per second from ``--workers`` DataLoader workers, through
  the datamodule's ``on_before_batch_transfer`` (so ``--decode-on-device`` batches are
  decoded and augmented on ``--device``) and the copy to the device;
* the model: optimizer steps per second on one such batch, repeated (fused AdamW, bf16
  autocast on CUDA);

and prints both in samples/s, which one limits training, and how many workers the loader
would need to keep up at the measured rate per worker.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_overhead import step_fn  # noqa: E402
from pretrain_throughput import sync  # noqa: E402
from results_file import write_results  # noqa: E402

from mimkit.pretrain_cli import PretrainCLI  # noqa: E402


def build(args: argparse.Namespace):
    overrides = ["--data.root", args.root, "--data.num_workers", str(args.workers)]
    if args.batch_size:
        overrides += ["--data.batch_size", str(args.batch_size)]
    if args.decode_on_device:
        overrides += ["--data.decode_on_device", "true"]
    cli = PretrainCLI(args=["--config", args.config, *overrides], run=False)
    return cli.model, cli.datamodule


def loader_rate(datamodule, device: torch.device, batches: int) -> tuple[float, float, int]:
    """Samples/s of the workers alone and of the whole loader up to device batches (first
    batch per worker excluded), and the batch size."""
    datamodule.setup("fit")
    datamodule.device = lambda: device  # decode on the benchmark's device, no trainer here
    rates = []
    for full in (False, True):
        loader = datamodule.train_dataloader()
        iterator = iter(loader)
        for _ in range(max(1, loader.num_workers)):
            next(iterator)
        sync(device)
        start, samples = time.perf_counter(), 0
        for _ in range(batches):
            batch = next(iterator)
            if full:
                batch = move_data_to_device(datamodule.on_before_batch_transfer(batch, 0), device)
                samples += batch["pixels"].shape[0]
            else:
                samples += len(batch["label"]) if "label" in batch else loader.batch_size
        sync(device)
        rates.append(samples / (time.perf_counter() - start))
        del iterator
    return rates[0], rates[1], loader.batch_size


def model_rate(model, datamodule, device: torch.device, steps: int) -> float:
    """Samples/s of optimizer steps on one loaded batch."""
    batch = move_data_to_device(
        datamodule.on_before_batch_transfer(next(iter(datamodule.train_dataloader())), 0), device
    )
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    step = step_fn(model, batch, optimizer, autocast)

    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch["pixels"].shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--root", required=True, help="training images (replaces the recipe's)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode-on-device", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, datamodule = build(args)
    workers_only, loader, batch_size = loader_rate(datamodule, device, args.batches)
    steps = model_rate(model, datamodule, device, args.steps)
    per_worker = loader / max(1, args.workers)
    needed = steps / per_worker if per_worker else float("inf")
    bottleneck = "loader" if loader < steps else "model"
    row = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": args.config,
        "batch_size": batch_size,
        "workers": args.workers,
        "decode_on_device": args.decode_on_device,
        "worker_samples_per_s": round(workers_only, 1),
        "loader_samples_per_s": round(loader, 1),
        "model_samples_per_s": round(steps, 1),
        "bottleneck": bottleneck,
        "workers_to_keep_up": round(needed, 1),
    }
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        write_results(args.json, row)


if __name__ == "__main__":
    main()
