"""What pretraining bought: frozen-feature accuracy of a pretrained vs a random encoder.

``python -m mimkit.finetune.quickstart_report --ckpt runs/quickstart/mae_digits/checkpoints/last.ckpt``
extracts features of the held-out digits once per encoder and prints a table of the
cached-feature linear probe (LARS, MAE's probe recipe scaled down to 1437 images: 50 epochs of batch 256, base lr 10
because LARS's 0.001 trust ratio needs a larger lr over ~300 steps than over ImageNet's ~7000) and k-NN (k=20,
T=0.07) accuracies, for the pretrained encoder and for the same architecture randomly
initialized (same seed, same init as pretraining starts from).

A video checkpoint (``runs/quickstart/videomae_moving_digits/...``) is evaluated the same way
on moving digits (:class:`~mimkit.data.moving_digits.MovingDigits`, one clip per index,
held-out digit images in the validation clips), labeled by digit (10 classes) or, with
``--label direction``, by motion direction (8 classes); encoders without a class token
are reported on mean-pooled patch tokens only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from mimkit.data import Digits
from mimkit.data.moving_digits import MovingDigits

from .checkpoint import (
    CheckpointError,
    RawCheckpoint,
    build_encoder,
    load_encoder_state,
    read_checkpoint,
)
from .evaluate import cached_probe, compute_feature_sets, knn_evaluate

__all__ = ["main", "report"]


def report(
    ckpt: str | RawCheckpoint,
    pools: Sequence[str] = ("cls", "avg"),
    probe_epochs: int = 50,
    probe_lr: float = 10.0,
    k: int = 20,
    temperature: float = 0.07,
    seed: int = 0,
    label: str = "digit",
    video_clips: int = 2048,
    include_random: bool = True,
) -> list[dict[str, object]]:
    """Rows of ``{"encoder", "pool", "probe_top1", "knn_top1", ...}`` for the digits split
    (moving digits with ``video_clips`` training clips for a video checkpoint): the
    pretrained encoder, then (``include_random``) the same architecture randomly initialized."""
    raw = ckpt if isinstance(ckpt, RawCheckpoint) else read_checkpoint(ckpt)
    torch.manual_seed(seed)
    random_encoder = build_encoder(raw.meta, raw.path) if include_random else None
    pretrained = build_encoder(raw.meta, raw.path)
    load_encoder_state(pretrained, raw)
    img_size = pretrained.patch_embed.img_size[0]
    if pretrained.is_video:
        datamodule = MovingDigits(
            img_size=img_size,
            num_frames=pretrained.num_frames,
            num_samples=video_clips,
            num_val_samples=512,
            label=label,  # type: ignore[arg-type]
            batch_size=128,
        )
    else:
        datamodule = Digits(img_size=img_size, batch_size=256)
    num_classes = int(datamodule.num_classes or 10)
    if pretrained.num_prefix_tokens == 0:
        pools = [pool for pool in pools if pool != "cls"] or ["avg"]
    rows: list[dict[str, object]] = []
    method = str(raw.meta.get("method", "checkpoint"))
    encoders = [(f"{method} pretrained", pretrained)]
    if random_encoder is not None:
        encoders.append(("random init", random_encoder))
    for name, encoder in encoders:
        feature_sets = compute_feature_sets(encoder, datamodule, pools)  # type: ignore[arg-type]
        for pool, feats in feature_sets.items():
            start = time.perf_counter()
            probe = cached_probe(
                feats, num_classes, epochs=probe_epochs, base_lr=probe_lr, warmup_epochs=5,
                seed=seed,
            )  # fmt: skip
            probe_s = time.perf_counter() - start
            knn = knn_evaluate(feats, num_classes, k=k, temperature=temperature)
            rows.append(
                {
                    "encoder": name,
                    "method": method,
                    "pool": pool,
                    "probe_top1": probe["top1"],
                    "probe_top5": probe["top5"],
                    "knn_top1": knn["top1"],
                    "knn_top5": knn["top5"],
                    "extract_s": feats.seconds,
                    "probe_s": probe_s,
                    "val": len(feats.val),
                    "classes": num_classes,
                    "data": "moving digits" if encoder.is_video else "digits",
                }
            )
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    width = max(16, *(len(str(row["encoder"])) for row in rows))
    header = f"{'encoder':<{width}} {'features':<10} {'linear probe top-1':>19} {'k-NN top-1':>11}"
    lines = [header, "-" * len(header)]
    for row in rows:
        pool = "class tok" if row["pool"] == "cls" else "avg patch"
        lines.append(
            f"{row['encoder']:<{width}} {pool:<10} {row['probe_top1']:>18.1f}% "
            f"{row['knn_top1']:>10.1f}%"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimkit.finetune.quickstart_report")
    parser.add_argument(
        "--ckpt",
        nargs="+",
        default=["runs/quickstart/mae_digits/checkpoints/last.ckpt"],
        help="one or more checkpoints: one table, a row per method (random init once per "
        "encoder architecture)",
    )
    parser.add_argument("--pools", nargs="+", default=["cls", "avg"], choices=["cls", "avg"])
    parser.add_argument("--probe_epochs", type=int, default=50)
    parser.add_argument(
        "--label", default="digit", choices=["digit", "direction"], help="video checkpoints"
    )
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows: list[dict[str, object]] = []
    architectures: list[str] = []
    try:
        for ckpt in args.ckpt:
            raw = read_checkpoint(ckpt)  # read once, for the architecture and the report
            config = json.dumps(raw.meta.get("encoder"), sort_keys=True)
            rows += report(
                raw, args.pools, args.probe_epochs, label=args.label,
                include_random=config not in architectures,
            )  # fmt: skip
            architectures.append(config)
    except CheckpointError as err:
        print(f"quickstart report: error: {err}", file=sys.stderr)
        return 2
    if len({row["data"] for row in rows}) > 1:
        print(
            "quickstart report: error: give image or video checkpoints, not both", file=sys.stderr
        )
        return 2
    random_rows = [row for row in rows if row["encoder"] == "random init"]
    if len({row["method"] for row in random_rows}) > 1:  # one per architecture: say whose
        for row in random_rows:
            row["encoder"] = f"random init ({row['method']} encoder)"
    rows.sort(key=lambda row: str(row["encoder"]).startswith("random init"))  # methods first
    first = rows[0]
    val, classes = first["val"], int(first["classes"])  # type: ignore[call-overload]
    what = "clips" if first["data"] == "moving digits" else "images"
    print(
        f"\nHeld-out {first['data']} ({val} {what}, {classes} classes, chance "
        f"{100 / classes:.1f}%): frozen encoder features"
    )
    print(format_table(rows))
    print(f"(evaluated in {time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
