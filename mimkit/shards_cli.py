"""``mimkit shards write``: image or video sources into webdataset tar shards."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from mimkit.data.shard_writer import write_shards

from .help_format import DefaultsHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkit shards",
        description="Write webdataset tar shards (keys jpg/mp4 + cls + json). An interrupted "
        "write continues where it stopped when run again with the same arguments.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser(
        "write",
        help="write shards from a folder or list file",
        formatter_class=DefaultsHelpFormatter,
        allow_abbrev=False,
    )
    write.add_argument(
        "--source",
        required=True,
        help="folder of class subfolders, flat folder, or list file (path[ ,]label per line; "
        "video: Kinetics/SSv2-style .csv/.txt)",
    )
    write.add_argument(
        "--out", required=True, help="shard path with a number field, e.g. /shards/train-%%06d.tar"
    )
    write.add_argument(
        "--kind", choices=("image", "video"), default="image", help="what the source holds"
    )
    write.add_argument("--shard-size", default="1GB", help="target size per shard")
    write.add_argument("--max-count", type=int, default=100_000, help="max samples per shard")
    write.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def run_shards(args: Sequence[str]) -> int:
    """``mimkit shards write --source S --out P [--kind video] [--shard-size 1GB]``."""
    options = build_parser().parse_args(list(args))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shards = write_shards(
        options.source,
        options.out,
        kind=options.kind,
        shard_size=options.shard_size,
        max_count=options.max_count,
        progress=not options.quiet,
    )
    first, last = shards[0], shards[-1]
    print(f"wrote {len(shards)} shards: {first} .. {last}")
    return 0
