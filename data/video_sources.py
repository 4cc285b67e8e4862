"""Video sources: the ``(path, label)`` samples of a folder or a Kinetics / SSv2 style list.

* a folder of class subfolders of videos (labels from the sorted subfolder names);
* a flat folder of videos (unlabeled);
* a list file (``.csv`` / ``.txt``), one ``path label`` or ``path,label`` per line, as the
  VideoMAE / MAE-ST Kinetics-400 and SSv2 lists; relative paths are resolved against
  ``data_prefix`` (default: the list file's folder); a ``path,label`` header and ``#``
  comments are skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg")
_LINE = re.compile(r"^(?P<path>.+?)(?:[\s,]+(?P<label>-?\d+))?\s*$")

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
        match = _LINE.match(line)
        assert match is not None
        if number == 1 and match["label"] is None and "," in line:
            continue  # a "path,label" header
        path = Path(match["path"].strip().strip(",")).expanduser()
        samples.append((str(path if path.is_absolute() else prefix / path), _label(match)))
    if not samples:
        raise ValueError(f"Video list {list_file} lists no videos.")
    return samples


def _label(match: re.Match[str]) -> int | None:
    return int(match["label"]) if match["label"] is not None else None


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
