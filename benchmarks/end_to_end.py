"""End-to-end pretraining throughput from JPEG shards against synthetic data, through Lightning.

    python benchmarks/end_to_end.py --config recipes/pretrain/mae_vit_base_patch16_in1k.yaml \\
        --device cuda --images 20000 --workers 15 --batch-size 256 --warmup 10 --steps 50
    python benchmarks/end_to_end.py --device cpu --workers 2 --batch-size 16 --images 256 \\
        --warmup 2 --steps 6 -- --model.encoder.init_args.name vit_small_patch16_224 \\
        --model.compile_modules false

It writes ``--images`` smooth random JPEGs of about ImageNet's average size (or reads
``--root``), packs them into shards with ``mimkit shards write``'s writer, then trains the
recipe's model on one device with ``Trainer.fit`` (bf16-mixed on CUDA, fp32 on the CPU;
everything after ``--`` overrides the recipe) once per source:

* ``synthetic``: one fixed batch of random pixels, already on the device: the model alone;
* ``shards``: ``mimkit.data.Shards`` with ``--workers`` workers decoding with PIL;
* ``shards+device``: the same with ``decode_on_device``, the workers only reading bytes;
* ``folder``: ``mimkit.data.ImageFolder`` on the same JPEGs, decoded in the workers.

Each run times ``--steps`` optimizer steps after ``--warmup`` (compilation and worker start
happen there) and reports samples/s and the ratio to ``synthetic``: the issue's "end-to-end
throughput from real JPEG shards >= 80% of synthetic" is that ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import sync  # noqa: E402
from results_file import write_results  # noqa: E402
from synthetic_images import make_images  # noqa: E402

from mimkit.data import ImageFolder, Shards  # noqa: E402
from mimkit.data.shard_writer import write_shards  # noqa: E402
from mimkit.pretrain_cli import PretrainCLI  # noqa: E402

SOURCES = ("synthetic", "shards", "shards+device", "folder")


class StepClock(L.Callback):
    """Wall time of the optimizer steps ``warmup .. warmup + steps - 1`` (device synced)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.end = 0.0
        self.samples = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup - 1:
            sync(module.device)
            self.start = time.perf_counter()
        elif self.warmup <= batch_idx < self.warmup + self.steps:
            self.samples += int(batch["pixels"].shape[0])
            if batch_idx == self.warmup + self.steps - 1:
                sync(module.device)
                self.end = time.perf_counter()

    def rate(self) -> float:
        return self.samples / (self.end - self.start)


def build(args: argparse.Namespace, root: Path) -> tuple[Any, ImageFolder]:
    """The recipe's model and its ImageFolder data on ``root`` (one device, no strategy)."""
    overrides = [
        "--data.root", str(root), "--data.num_workers", str(args.workers),
        "--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto",
    ]  # fmt: skip
    if args.batch_size:
        overrides += ["--data.batch_size", str(args.batch_size)]
    cli = PretrainCLI(args=["--config", args.config, *overrides, *args.overrides], run=False)
    cli.model.scale_lr = False  # the fixed-batch source has no datamodule to read it from
    cli.model.warmup_steps = 0  # the lr schedule does not change the step time
    return cli.model, cli.datamodule


class FixedBatches(torch.utils.data.IterableDataset):
    """The same batch ``count`` times: data that costs nothing."""

    def __init__(self, batch: dict[str, torch.Tensor], count: int) -> None:
        self.batch, self.count = batch, count

    def __iter__(self):
        for _ in range(self.count):
            yield self.batch


def run_source(source: str, args: argparse.Namespace, root: Path, urls: str) -> dict[str, Any]:
    model, folder = build(args, root)
    device = torch.device(args.device)
    total = args.warmup + args.steps
    common = {
        "img_size": folder.img_size, "batch_size": folder.batch_size,
        "num_workers": args.workers, "crop_scale": folder.crop_scale,
        "mean": folder.mean, "std": folder.std,
    }  # fmt: skip
    fit_kwargs: dict[str, Any] = {}
    if source == "synthetic":
        size = folder.img_size
        batch = {"pixels": torch.randn(folder.batch_size, 3, size, size, device=device)}
        loader = torch.utils.data.DataLoader(
            FixedBatches(batch, total), batch_size=None, num_workers=0
        )
        fit_kwargs["train_dataloaders"] = loader
    elif source.startswith("shards"):
        fit_kwargs["datamodule"] = Shards(
            urls, resampled=True, epoch_length=total * folder.batch_size,
            decode_on_device=source == "shards+device", **common,
        )  # fmt: skip
    else:
        fit_kwargs["datamodule"] = folder
    clock = StepClock(args.warmup, args.steps)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_steps=total, max_epochs=-1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        callbacks=[clock], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=args.workdir,
    )  # fmt: skip
    trainer.fit(model, **fit_kwargs)
    return {
        "source": source,
        "batch_size": folder.batch_size,
        "workers": 0 if source == "synthetic" else args.workers,
        "samples_per_s": round(clock.rate(), 2),
        "step_ms": round(1000 * folder.batch_size / clock.rate(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recipes/pretrain/mae_vit_base_patch16_in1k.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", help="JPEG folder to use (default: --images synthetic JPEGs)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=375, help="synthetic image height")
    parser.add_argument("--shard-size", default="100MB")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, after --")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mimkit-e2e-"))
    args.workdir = str(work / "run")
    try:
        root = Path(args.root) if args.root else work / "images"
        if not args.root:
            start = time.perf_counter()
            make_images(root / "all", args.images, args.size)
            print(f"wrote {args.images} JPEGs in {time.perf_counter() - start:.0f} s")
        shards = write_shards(
            str(root), str(work / "shards" / "s-%06d.tar"), shard_size=args.shard_size,
            progress=False,
        )  # fmt: skip
        urls = "::".join(shards)
        rows = [run_source(source, args, root, urls) for source in args.sources]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = next((r["samples_per_s"] for r in rows if r["source"] == "synthetic"), None)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\n{device}, {args.config} {' '.join(args.overrides)}")
    print("| source | workers | batch | samples/s | step ms | vs synthetic |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        row["vs_synthetic"] = round(row["samples_per_s"] / base, 3) if base else None
        ratio = f"{100 * row['vs_synthetic']:.0f}%" if base else "-"
        print(
            f"| {row['source']} | {row['workers']} | {row['batch_size']} | "
            f"{row['samples_per_s']:.1f} | {row['step_ms']:.0f} | {ratio} |"
        )
    if args.json:
        write_results(args.json, {"device": device, "config": args.config, "rows": rows})


if __name__ == "__main__":
    main()
