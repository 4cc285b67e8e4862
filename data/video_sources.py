"""Video sources: the ``(path, label)`` samples of a folder or a Kinetics / SSv2 style list.

* a folder of class subfolders of videos (labels from the sorted subfolder names);
* a flat folder of videos (unlabeled);
* a list file (``.csv`` / ``.txt``), one video per line, relative paths resolved against
  ``data_prefix`` (default: the list file's folder); a ``path,label`` header and ``#``
  comments are skipped. A line is the path followed by 0 to 3 integer columns, separated
  by whitespace or commas (the path may contain spaces):

  - ``path``: unlabeled;
  - ``path label`` / ``path,label``: the VideoMAE / MAE-ST Kinetics-400 and SSv2 lists;
    the label must be ``>= 0``;
  - ``path start total`` or ``path start total label``: VideoMAE V2's pretraining lists
    (``dataset/pretrain_datasets.py``), where ``total < 0`` (``-1``) marks a video file,
    read whole, with ``start`` and ``label`` unused. Such a line is an unlabeled sample:
    V2 pretrains without labels. ``total >= 0`` marks a folder of decoded frames, which
    V2 reads from ``start``; mimkit decodes video files only and refuses the line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg")
_LINE = re.compile(r"^(?P<path>.+?)(?P<columns>(?:[\s,]+-?\d+)*)\s*$")
_FORMATS = "expected `path`, `path label` or VideoMAE V2's `path start total [label]`"

VideoSamples = list[tuple[str, int | None]]


def _is_video(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


def _read_video_list(list_file: Path, data_prefix: Path | None) -> VideoSamples:
    samples: VideoSamples = []
    prefix = data_prefix if data_prefix is not None else list_file.parent
    for number, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if number == 1 and "," in line and _is_header(line):
            continue
        written, label = _parse_line(line, f"{list_file}:{number}")
        path = Path(written).expanduser()
        samples.append((str(path if path.is_absolute() else prefix / path), label))
    if not samples:
        raise ValueError(f"Video list {list_file} lists no videos.")
    if len({label is None for _, label in samples}) > 1:
        raise ValueError(
            f"Video list {list_file} mixes labeled and unlabeled lines (a batch would have "
            "labels for some clips only); give every line a label, or none."
        )
    return samples


def _is_header(line: str) -> bool:
    """Whether a line ends in no integer column, as a ``path,label`` header does."""
    match = _LINE.match(line)
    return match is not None and not match["columns"]


def _parse_line(line: str, where: str) -> tuple[str, int | None]:
    """The path and label of one list line (see the module docstring for the formats).

    Args:
        line: A stripped, non-empty, non-comment line.
        where: ``file:line``, for error messages.

    Returns:
        The path as written and the label, ``None`` for an unlabeled sample.

    Raises:
        ValueError: If the label of a ``path label`` line is negative, a VideoMAE V2 line
            lists a folder of frames (``total >= 0``) or more than 3 columns follow the path.
    """
    match = _LINE.match(line)
    assert match is not None  # the pattern matches any non-empty line
    path = match["path"].strip().strip(",")
    columns = [int(column) for column in re.findall(r"-?\d+", match["columns"])]
    if not columns:
        return path, None
    if len(columns) == 1:
        if columns[0] < 0:
            raise ValueError(f"{where}: negative label {columns[0]} in {line!r}; {_FORMATS}.")
        return path, columns[0]
    if len(columns) > 3:
        raise ValueError(f"{where}: {len(columns)} numbers after the path in {line!r}; {_FORMATS}.")
    total = columns[1]
    if total >= 0:
        raise ValueError(
            f"{where}: {line!r} reads as VideoMAE V2's `path start total` with total {total} "
            ">= 0, a folder of decoded frames; mimkit reads video files only (total -1)."
        )
    return path, None


def require_video_source(root: str | Path) -> Path:
    """``root`` with ``~`` expanded; ``FileNotFoundError`` if it does not exist."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"Video source {root} does not exist.")
    return root


def scan_videos(
    root: str | Path, classes: Sequence[str] | None = None, data_prefix: str | Path | None = None
) -> VideoSamples:
    """List the ``(path, label)`` samples of a video source (see the module docstring).

    Args:
        root: Class-subfolder folder, flat folder or list file.
        classes: Class names defining label indices for a class-subfolder root.
        data_prefix: Folder that relative paths of a list file are resolved against.

    Raises:
        FileNotFoundError: If ``root`` does not exist.
        ValueError: If it holds no videos.
    """
    root = require_video_source(root)
    if root.is_file():
        return _read_video_list(root, Path(data_prefix) if data_prefix is not None else None)
    subfolders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        samples: VideoSamples = [
            (str(p), None) for p in sorted(root.iterdir()) if _is_video(p.name)
        ]
    else:
        class_to_idx = {name: i for i, name in enumerate(classes or subfolders)}
        samples = []
        for name in subfolders:
            if name not in class_to_idx:
                raise ValueError(
                    f"Video folder {root} has class {name!r} not in {list(classes or [])}."
                )
            for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                samples += [
                    (os.path.join(dirpath, f), class_to_idx[name])
                    for f in sorted(filenames)
                    if _is_video(f)
                ]
    if not samples:
        raise ValueError(f"Video folder {root} contains no videos ({', '.join(VIDEO_EXTENSIONS)}).")
    return samples
