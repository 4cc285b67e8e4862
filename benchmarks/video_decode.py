"""Video decode throughput: clips/s per data-loading worker, with and without repeated sampling.

Writes ``--videos`` synthetic mp4 files (moving noise, ``--length`` frames of
``--width x --height``, MPEG-4 Part 2 or H.264) to a temporary folder, then reads them
through :class:`mimkit.data.video.VideoClipDataset` in this process (one worker):
decode with PyAV, sample ``repeat_aug`` clips of ``--frames`` frames at stride
``--rate``, multi-scale crop, flip and normalize each. Reported: clips/s and videos/s.

Example::

    python benchmarks/video_decode.py --videos 8 --length 300 --repeat 1 2 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from results_file import write_results

from mimkit.data.video import VideoClipDataset
from mimkit.data.video_transform import VideoClipTransform


def write_video(path: Path, length: int, width: int, height: int, codec: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(length):
            frame = np.ascontiguousarray(base[:, i % width : i % width + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--length", type=int, default=300, help="frames per video (10 s at 30 fps)")
    parser.add_argument("--width", type=int, default=340)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--codec", default="libx264")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeat", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one loader worker

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"v{i}.mp4" for i in range(args.videos)]
        for i, path in enumerate(paths):
            write_video(path, args.length, args.width, args.height, args.codec, i)
        samples = [(str(p), 0) for p in paths]
        transform = VideoClipTransform(args.img_size, train=True)
        print(
            f"{args.videos} videos of {args.length} frames {args.width}x{args.height} ({args.codec}), "
            f"clips {args.frames}x{args.img_size} stride {args.rate}, one worker"
        )
        print("| repeat_aug | clips/s | videos/s | s per video |\n|---|---|---|---|")
        for repeat in args.repeat:
            data = VideoClipDataset(
                samples, transform, args.frames, args.rate, "random", repeat_aug=repeat
            )
            data[0]  # warm up
            start = time.perf_counter()
            for _ in range(args.passes):
                for i in range(len(data)):
                    assert data[i] is not None
            seconds = time.perf_counter() - start
            videos = args.passes * len(data)
            row = {
                "repeat_aug": repeat,
                "clips_per_s": videos * repeat / seconds,
                "videos_per_s": videos / seconds,
            }
            rows.append(row)
            print(
                f"| {repeat} | {row['clips_per_s']:.2f} | {row['videos_per_s']:.2f} "
                f"| {seconds / videos:.3f} |"
            )
    if args.json:
        write_results(args.json, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
