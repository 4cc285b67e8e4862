"""Writes image or video sources into webdataset tar shards, resumably.

Each sample is one tar member group named by a 9-digit running index: ``jpg`` (image bytes:
JPEG files copied as they are, other formats re-encoded as JPEG) or ``mp4`` (the video file's
bytes as they are, whatever the container), ``cls`` (the integer label, labeled sources only)
and ``json`` (``{"source": path, "label": int | null}``).

A shard is written to ``<name>.tmp`` and renamed when complete, after which the manifest
``<first shard's folder>/<stem>.manifest.json`` records it (its sample range, count and
bytes). A write that is interrupted and started again with the same arguments keeps the
completed shards and continues after the last one, giving the same shards as an
uninterrupted write.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import webdataset as wds
from PIL import Image

from .errors import DataConfigError
from .folder import scan_images

log = logging.getLogger(__name__)

Kind = Literal["image", "video"]

_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(size: str | int) -> int:
    """Bytes of a size such as ``1GB``, ``500MB``, ``64KiB`` or ``1000000``."""
    if isinstance(size, int):
        return size
    match = _SIZE.match(size)
    if match is None:
        raise DataConfigError(f"Cannot read the size {size!r}; write e.g. 1GB, 500MB or 1000000.")
    unit = (match["unit"] or "").lower().removesuffix("b")
    base = 1024 ** ("kmgt".index(unit[0]) + 1) if unit.endswith("i") else _UNITS[unit]
    return int(float(match["number"]) * base)


def scan_source(source: str | Path, kind: Kind) -> list[tuple[str, int | None]]:
    """``(path, label)`` samples of an image or video source (folders or list files)."""
    if kind == "image":
        return scan_images(source)
    from .video_sources import scan_videos

    return scan_videos(source)


def _image_bytes(path: str) -> bytes:
    data = Path(path).read_bytes()
    if path.lower().endswith((".jpg", ".jpeg")):
        return data
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=95)
        return out.getvalue()


@dataclass
class ShardRecord:
    """One completed shard in the manifest."""

    name: str
    first: int
    count: int
    bytes: int


class ShardWriter:
    """Writes ``(path, label)`` samples into numbered tar shards.

    Args:
        pattern: Shard path with a printf field for the shard number, e.g.
            ``/shards/in1k-train-%06d.tar``.
        kind: ``"image"`` (``jpg`` members) or ``"video"`` (``mp4`` members).
        shard_size: Target bytes per shard (a shard closes once it reaches it).
        max_count: Maximum samples per shard.
        progress: Print a progress line to stderr every few seconds.
    """

    def __init__(
        self,
        pattern: str,
        kind: Kind = "image",
        shard_size: int | str = "1GB",
        max_count: int = 100_000,
        progress: bool = True,
    ) -> None:
        if "%" not in pattern:
            raise DataConfigError(f"Shard pattern {pattern!r} needs a number field such as %06d.")
        self.pattern = pattern
        self.kind = kind
        self.shard_size = parse_size(shard_size)
        self.max_count = max_count
        self.progress = progress
        first = Path(pattern % 0)
        stem = Path(pattern).name.split("%")[0].rstrip("-_.") or "shards"
        self.manifest_path = first.parent / f"{stem}.manifest.json"

    def _load_manifest(self, total: int) -> list[ShardRecord]:
        if not self.manifest_path.exists():
            return []
        manifest = json.loads(self.manifest_path.read_text())
        if manifest.get("total") != total or manifest.get("kind") != self.kind:
            raise DataConfigError(
                f"{self.manifest_path} describes another source ({manifest.get('total')} "
                f"{manifest.get('kind')} samples, now {total} {self.kind}); remove it to start over."
            )
        records = [ShardRecord(**r) for r in manifest["shards"]]
        kept = []
        for record in records:  # keep the complete, intact prefix
            path = Path(self.pattern % len(kept))
            if not path.exists() or path.stat().st_size != record.bytes:
                break
            kept.append(record)
        return kept

    def _save_manifest(self, records: list[ShardRecord], total: int, done: bool) -> None:
        manifest = {
            "kind": self.kind,
            "total": total,
            "done": done,
            "pattern": self.pattern,
            "shards": [vars(r) for r in records],
        }
        temporary = self.manifest_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(manifest, indent=1))
        os.replace(temporary, self.manifest_path)

    def _sample(self, index: int, path: str, label: int | None) -> dict[str, Any]:
        if self.kind == "image":
            payload = {"jpg": _image_bytes(path)}
        else:
            payload = {"mp4": Path(path).read_bytes()}
        sample: dict[str, Any] = {"__key__": f"{index:09d}", **payload}
        if label is not None:
            sample["cls"] = str(label).encode()
        sample["json"] = json.dumps({"source": path, "label": label}).encode()
        return sample

    def write(self, samples: Sequence[tuple[str, int | None]]) -> list[str]:
        """Writes all samples (continuing a previous interrupted write); returns the shard paths.

        Unreadable source files are skipped and counted in the log.
        """
        total = len(samples)
        records = self._load_manifest(total)
        Path(self.pattern % 0).parent.mkdir(parents=True, exist_ok=True)
        index = records[-1].first + records[-1].count if records else 0
        if records:
            log.info("Resuming after %d complete shards (%d samples).", len(records), index)
        skipped, started, last_report = 0, time.monotonic(), 0.0
        while index < total:
            name = self.pattern % len(records)
            temporary = name + ".tmp"
            first, count = index, 0
            # An integer mtime keeps every member a single 512-byte USTAR header: a float
            # one makes tarfile add a PAX header per member, which readers parse as well.
            with wds.TarWriter(temporary, mtime=int(time.time())) as sink:
                while index < total and count < self.max_count:
                    path, label = samples[index]
                    try:
                        sink.write(self._sample(index, path, label))
                        count += 1
                    except OSError as error:  # unreadable or undecodable source file
                        log.warning("Skipping %s: %r", path, error)
                        skipped += 1
                    index += 1
                    if os.path.getsize(temporary) >= self.shard_size:
                        break
                    now = time.monotonic()
                    if self.progress and now - last_report > 2:
                        last_report = now
                        rate = index / max(now - started, 1e-9)
                        print(f"\r{index}/{total} samples, {rate:.0f}/s", end="", file=sys.stderr)
            os.replace(temporary, name)
            records.append(ShardRecord(name, first, count, os.path.getsize(name)))
            self._save_manifest(records, total, done=index >= total)
        if self.progress:
            print(f"\r{total}/{total} samples in {len(records)} shards", file=sys.stderr)
        if skipped:
            log.warning("%d unreadable source files were skipped.", skipped)
        self._save_manifest(records, total, done=True)
        return [r.name for r in records]


def write_shards(
    source: str | Path | Iterable[tuple[str, int | None]],
    pattern: str,
    kind: Kind = "image",
    shard_size: int | str = "1GB",
    max_count: int = 100_000,
    progress: bool = True,
) -> list[str]:
    """Writes an image/video folder or list (or ``(path, label)`` pairs) as tar shards.

    Args:
        source: Folder of class subfolders, flat folder, list file (``path[ ,]label`` lines),
            or an iterable of ``(path, label)``.
        pattern: Shard path with a printf number field, e.g. ``out/train-%06d.tar``.
        kind: ``"image"`` or ``"video"``.
        shard_size: Target size per shard (``"1GB"``, ``"256MB"``, bytes).
        max_count: Maximum samples per shard.
        progress: Print progress to stderr.

    Returns:
        The shard paths, in order.
    """
    if isinstance(source, (str, Path)):
        samples = scan_source(source, kind)
    else:
        samples = list(source)
    writer = ShardWriter(pattern, kind, shard_size, max_count, progress)
    return writer.write(samples)
