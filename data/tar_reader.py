"""A lean reader of webdataset tar shards: samples as dicts of raw bytes.

webdataset's own reader goes through Python's general ``tarfile`` module, which costs
several times more per sample than opening and reading a file (docs/cluster.md has the
numbers); in a decode-bound loader that is most of the gap between shards and a folder. Shards hold only regular files, so this reader parses the 512-byte headers
itself. It handles ustar names with a prefix, GNU long names (``L``) and PAX path/size
records (``x``), as written by ``tarfile`` and other shard writers, and skips every
other member type. Opening a URL (paths, ``pipe:``, ``http(s)``, ...) stays with
webdataset's ``gopen``.

A sample groups consecutive members by key, the name up to the first dot of its base
name, as webdataset does: ``dir/0001.jpg`` and ``dir/0001.cls`` give
``{"__key__": "dir/0001", "__url__": url, "jpg": b"...", "cls": b"..."}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

from webdataset.gopen import gopen

__all__ = ["TarFormatError", "iter_members", "iter_samples", "read_shard"]

BLOCK = 512
REGULAR_TYPES = (b"0", b"\x00", b"7")
META = re.compile(r"__[^/]*__($|/)")


class TarFormatError(ValueError):
    """A header that is not a tar header, or a member cut short."""


def _number(field: bytes) -> int:
    """Octal (NUL/space padded) or GNU base-256 numeric header field."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[:1] == b"\xff" else value
    digits = field.strip(b"\x00 ")
    return int(digits, 8) if digits else 0


def _string(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<length> <key>=<value>\\n"`` records of a PAX header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise TarFormatError(f"truncated tar member: wanted {size} bytes, got {len(data)}")
    return data


def iter_members(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of each regular file in a tar stream, in order."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if not header or header == b"\x00" * BLOCK:
            return  # end-of-archive marker (or a stream without one)
        if len(header) < BLOCK:
            raise TarFormatError("truncated tar header")
        stored = _number(header[148:156])
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarFormatError("bad tar header checksum")
        size = _number(header[124:136])
        kind = header[156:157]
        if "size" in pax:
            size = int(pax["size"])
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in REGULAR_TYPES:
            name = _string(header[:100])
            if header[257:262] == b"ustar" and header[345:346] != b"\x00":
                name = _string(header[345:500]) + "/" + name
            name = pax.get("path", long_name or name)
            data = _read_exact(stream, size)
            _read_exact(stream, padded - size)  # padding to the block; no copy of the data
            long_name, pax = None, {}
            yield name, data
        elif kind == b"L":
            long_name = _string(_read_exact(stream, padded)[:size])
        elif kind == b"x":
            pax = _pax_records(_read_exact(stream, padded)[:size])
        else:  # directories, links, global PAX headers, ...: nothing to yield
            _read_exact(stream, padded)
            long_name, pax = None, {}


def _split_key(name: str) -> tuple[str, str] | None:
    """``"dir/0001.seg.png" -> ("dir/0001", "seg.png")``; ``None`` without an extension."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:
        return None
    return name[:dot], name[dot + 1 :].lower()


def iter_samples(stream: IO[bytes], url: str = "") -> Iterator[dict[str, Any]]:
    """Samples of one tar stream: consecutive members grouped by key.

    Raises:
        TarFormatError: on a corrupt header, a truncated member, or a key repeated
            with the same extension within a sample.
    """
    sample: dict[str, Any] | None = None
    for name, data in iter_members(stream):
        if META.match(name):
            continue  # webdataset's metadata members
        split = _split_key(name)
        if split is None:
            continue
        key, ext = split
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        if ext in sample:
            raise TarFormatError(f"{name}: duplicate member in sample {key!r} of {url}")
        sample[ext] = data
    if sample is not None:
        yield sample


def read_shard(url: str) -> Iterator[dict[str, Any]]:
    """Samples of the shard at ``url`` (anything webdataset's ``gopen`` opens)."""
    with gopen(url, "rb", bufsize=1 << 20) as stream:
        yield from iter_samples(stream, url)
