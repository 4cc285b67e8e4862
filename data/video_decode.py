"""Clip frame indices (Kinetics strides, SSv2 segments, multi-clip testing) and PyAV decoding."""

from __future__ import annotations

from typing import Any, Literal

import torch

Sampling = Literal["random", "uniform"]


def clip_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    sampling: Sampling,
    train: bool,
    generator: torch.Generator | None = None,
    position: float = 0.5,
    fps: float | None = None,
    target_fps: float | None = None,
) -> list[int]:
    """Frame indices of one clip.

    ``random``: ``num_frames`` frames ``sampling_rate`` apart from a random start (when not
    training, the start at ``position`` of the room left, 0.5 = centered), clamped to the
    last frame for short videos (Kinetics). With ``target_fps`` and the video's ``fps``
    (MAE-ST) the clip spans ``sampling_rate * num_frames`` frames at ``target_fps``, the
    same duration whatever the video's rate: ``num_frames`` indices spread evenly over
    ``sampling_rate * num_frames / target_fps * fps`` frames from a random (float) start.
    ``uniform``: the video is split into ``num_frames`` equal segments and one frame is taken
    from each, at a random offset when training and at ``position`` of each segment
    otherwise (TSN-style, as VideoMAE samples Something-Something V2).

    Args:
        position: Where an evaluation clip sits, in ``[0, 1]``; multi-clip testing spreads
            it over the clips (:func:`eval_clip_positions`).
        fps: The video's frame rate, when known.
        target_fps: Rate the stride refers to (MAE-ST: 30); ``None`` keeps the stride in
            decoded frames.
    """
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"position must be in [0, 1], got {position}")
    if sampling == "uniform":
        edges = torch.linspace(0, num_video_frames, num_frames + 1)
        width = edges[1:] - edges[:-1]
        offset = (
            torch.rand(num_frames, generator=generator)
            if train
            else torch.full((num_frames,), min(position, 1 - 1e-6))
        )
        index = (edges[:-1] + offset * width).floor().long()
    elif sampling == "random" and target_fps and fps:
        span = sampling_rate * num_frames / target_fps * fps
        room = max(num_video_frames - span, 0.0)
        start = float(torch.rand((), generator=generator)) * room if train else position * room
        index = torch.linspace(start, start + span - 1, num_frames).long()
    elif sampling == "random":
        span = (num_frames - 1) * sampling_rate + 1
        room = max(0, num_video_frames - span)
        if train:
            start = int(torch.randint(room + 1, (1,), generator=generator))
        else:
            start = room // 2 if position == 0.5 else int(round(position * room))
        index = start + torch.arange(num_frames) * sampling_rate
    else:
        raise ValueError(f"sampling must be 'random' or 'uniform', got {sampling!r}")
    return index.clamp(0, num_video_frames - 1).tolist()


def eval_clip_positions(count: int, sampling: Sampling) -> list[float]:
    """Positions of ``count`` test clips: evenly spread starts from the first to the last
    possible one (``random``, VideoMAE's Kinetics testing), or offsets ``k / count`` within
    the segments (``uniform``: 0 and 0.5 for 2 clips, VideoMAE's Something-Something
    testing, whose ``ssv2.py`` reads frames ``int(tick * x)`` and ``int(tick / 2 + tick * x)``);
    one clip is centered.
    """
    if count < 1:
        raise ValueError(f"the number of test clips must be >= 1, got {count}")
    if count == 1:
        return [0.5]
    if sampling == "uniform":
        return [k / count for k in range(count)]
    return [k / (count - 1) for k in range(count)]


def frame_rate(stream: Any) -> float | None:
    """A PyAV video stream's average frame rate, ``None`` when the container has none."""
    return float(stream.average_rate) if stream.average_rate else None


def decode_frames(path: str, wanted: Any) -> dict[int, torch.Tensor]:
    """Decodes the frames of a video that ``wanted(num_frames, fps)`` asks for.

    Args:
        path: Video file.
        wanted: Callable mapping the video's frame count and frame rate (``None`` when the
            container has none) to the set of frame indices to keep; called with the
            container's count when it is known (decoding then stops after the last wanted
            frame), else after decoding every frame.

    Returns:
        ``{index: (H, W, 3) uint8}`` for the wanted indices.
    """
    import av  # the [video] extra

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = int(stream.frames or 0)
        fps = frame_rate(stream)
        keep = set(wanted(count, fps)) if count > 0 else None
        last = max(keep) if keep else -1
        frames: dict[int, torch.Tensor] = {}
        decoded: list[Any] = []
        for index, frame in enumerate(container.decode(stream)):
            if keep is None:
                decoded.append(frame)
                continue
            if index in keep:
                frames[index] = torch.from_numpy(frame.to_ndarray(format="rgb24"))
            if index >= last:
                break
    if keep is None:
        if not decoded:
            return {}
        keep = set(wanted(len(decoded), fps))
        frames = {i: torch.from_numpy(decoded[i].to_ndarray(format="rgb24")) for i in keep}
    elif keep - frames.keys():  # the container overstated its frame count
        return decode_all(path, wanted)
    return frames


def decode_all(path: str, wanted: Any) -> dict[int, torch.Tensor]:
    """:func:`decode_frames` ignoring the container's frame count."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = frame_rate(stream)
        decoded = list(container.decode(stream))
    if not decoded:
        return {}
    keep = set(wanted(len(decoded), fps))
    return {i: torch.from_numpy(decoded[i].to_ndarray(format="rgb24")) for i in keep}
