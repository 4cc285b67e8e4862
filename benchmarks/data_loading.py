"""Images (clips)/s of folder vs webdataset-shard reading with the training transform, 1..N workers.

    python benchmarks/data_loading.py --images 2000 --size 320 --workers 1 2 4 8 [--json out.json]
    python benchmarks/data_loading.py --kind video --videos 48 --batch-size 4 --batches 6
    python benchmarks/data_loading.py --root /datasets/imagenet/train --shards '/shards/in1k-{000000..000009}.tar'

Without ``--root`` it writes ``--images`` synthetic JPEGs (smooth random images of about
ImageNet's average size) to a temporary folder and shards them with ``mimkit shards write``'s
writer; ``--kind video`` writes ``--videos`` 4-second H.264 clips instead and reads
16-frame clips with VideoMAE's transform (folder: ``VideoClipDataset``; shards: the ``mp4``
bytes through ``VideoDecoder``). Before the loaders, it prints what getting the raw bytes
costs per sample (open + read of a file; mimkit's tar reader; webdataset's). Each measurement reads ``--batches`` batches after one warm-up batch per worker; folder and
shards alternate for ``--rounds`` rounds and the median is reported. It prints a table
(images/s in total and per worker) and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds
from results_file import write_results
from synthetic_images import make_images
from torch.utils.data import DataLoader
from video_decode import write_video  # benchmarks/ is on the path when run as a script

from mimkit.data.collate import collate_skipping
from mimkit.data.folder import ImageFileDataset
from mimkit.data.shard_writer import scan_source, write_shards
from mimkit.data.shards import ShardStream, VideoDecoder, expand_urls
from mimkit.data.tar_reader import read_shard
from mimkit.data.transforms import mae_train_transform
from mimkit.data.video import VideoClipDataset
from mimkit.data.video_transform import VideoClipTransform


def measure(dataset, workers: int, batch_size: int, batches: int) -> float:
    """Images/s over ``batches`` batches after one warm-up batch per worker."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_skipping,
        shuffle=not isinstance(dataset, torch.utils.data.IterableDataset),
        persistent_workers=False,
    )
    iterator = iter(loader)
    for _ in range(max(1, workers)):
        next(iterator)
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:  # a small folder: start another pass
            iterator = iter(loader)
            batch = next(iterator)
        seen += len(batch["pixels"])
    return seen / (time.perf_counter() - start)


def make_videos(folder: Path, count: int, height: int) -> None:
    """``count`` 4-second H.264 clips of moving noise, ``height`` pixels high, 4:3."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_video(folder / f"{i:06d}.mp4", 120, height * 2 // 3 * 2, height, "libx264", seed=i)


def reading_costs(paths: list[Path], urls: list[str], repeats: int = 5) -> dict[str, float]:
    """Microseconds per sample to get the raw bytes, without decoding (best of ``repeats``)."""

    def folder() -> int:
        for path in paths:
            path.read_bytes()
        return len(paths)

    def mimkit_shards() -> int:
        return sum(1 for url in urls for _ in read_shard(url))

    def webdataset_shards() -> int:
        return sum(1 for _ in wds.tarfile_to_samples()({"url": url} for url in urls))

    costs = {}
    for name, read in [("folder (open + read)", folder), ("shards, mimkit reader", mimkit_shards),
                       ("shards, webdataset reader", webdataset_shards)]:  # fmt: skip
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            count = read()
            best = min(best, (time.perf_counter() - start) / count)
        costs[name] = best * 1e6
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="an image folder/list to read (default: synthetic)")
    parser.add_argument("--shards", help="shards of the same images (default: written here)")
    parser.add_argument("--kind", choices=("image", "video"), default="image")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--videos", type=int, default=48, help="synthetic videos (--kind video)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (video)")
    parser.add_argument("--rate", type=int, default=4, help="frame stride (video)")
    parser.add_argument("--size", type=int, default=375, help="synthetic image height")
    parser.add_argument("--img-size", type=int, default=224, help="MAE crop size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    workers = args.workers or sorted({1, 2, os.cpu_count() or 1})
    torch.set_num_threads(1)

    unit = "images/s" if args.kind == "image" else "clips/s"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.root) if args.root else Path(scratch) / "source"
        count = args.images if args.kind == "image" else args.videos
        if not args.root:
            if args.kind == "image":
                make_images(root, count, args.size)
            else:
                make_videos(root, count, args.size)
        if args.shards:
            urls = expand_urls(args.shards)
        else:
            pattern = str(Path(scratch) / "shards" / "s-%04d.tar")
            per_shard = max(1, count // (4 * max(workers)))  # several shards per worker
            urls = write_shards(root, pattern, args.kind, max_count=per_shard, progress=False)
        samples = scan_source(root, args.kind)
        if args.kind == "image":
            transform = mae_train_transform(args.img_size)
            folder = ImageFileDataset(samples, transform)
            shard_args = {"transform": transform, "shuffle_buffer": 256}
        else:
            folder = VideoClipDataset(samples, VideoClipTransform(args.img_size, train=True),
                                      num_frames=args.frames, sampling_rate=args.rate)  # fmt: skip
            decoder = VideoDecoder(args.img_size, True, args.frames, args.rate)
            shard_args = {"transform": decoder, "raw": True, "shuffle_buffer": 8}
        costs = reading_costs([Path(path) for path, _ in samples], urls)
        print(f"{'raw bytes, no decoding':26} {'us/sample':>9}")
        for name, cost in costs.items():
            print(f"{name:26} {cost:9.1f}")
        results: list[dict] = [{"reading_us_per_sample": costs}]
        print(f"{'source':8} {'workers':>7} {unit:>10} {'per worker':>10}  rounds ({unit})")
        for n in workers:
            rates: dict[str, list[float]] = {"folder": [], "shards": []}
            for _ in range(args.rounds):  # interleaved, so load changes hit both alike
                for name in rates:
                    if name == "folder":
                        dataset = folder
                    else:  # resampled: an endless stream, so every worker stays busy
                        dataset = ShardStream(urls, resampled=True, samples_per_rank=10**9,
                                              **shard_args)  # fmt: skip
                    rates[name].append(measure(dataset, n, args.batch_size, args.batches))
            for name, values in rates.items():
                rate = statistics.median(values)
                results.append({"source": name, "workers": n, "images_per_s": rate,
                                "per_worker": rate / n, "rounds": values})  # fmt: skip
                spread = " ".join(f"{v:.0f}" for v in values)
                print(f"{name:8} {n:7d} {rate:10.1f} {rate / n:10.1f}  {spread}")
    if args.json:
        write_results(args.json, results)


if __name__ == "__main__":
    main()
