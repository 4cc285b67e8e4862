"""Video clips from folders or Kinetics / Something-Something style lists, decoded with PyAV.

Sources (``root`` / ``val_root``):

* a folder of class subfolders of videos (labels from the sorted subfolder names);
* a flat folder of videos (unlabeled);
* a list file (``.csv`` / ``.txt``), one ``path label`` or ``path,label`` per line, as the
  VideoMAE / MAE-ST Kinetics-400 and SSv2 lists; relative paths are resolved against
  ``data_prefix`` (default: the list file's folder); a ``path,label`` header and ``#``
  comments are skipped.

Each read decodes one video once and samples ``repeat_aug`` clips from it (MAE-ST's
repeated sampling), each with its own crop and flip; the model draws an independent mask
for each. Videos that cannot be opened or decoded, or are shorter than ``min_frames``,
give ``None`` and are skipped, counted and reported by the shared
:class:`~mimkit.data.base.MimDataModule` machinery.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as TF

from .base import MimDataModule
from .collate import FileSamples, collate_skipping
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .views import ViewPair

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg")
#: VideoMAE's multi-scale crop: crop sides are these fractions of the short side.
MULTI_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
_LINE = re.compile(r"^(?P<path>.+?)(?:[\s,]+(?P<label>-?\d+))?\s*$")

Sampling = Literal["random", "uniform"]
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


#: VideoMAE's 13 fixed crop positions (``fix_crop`` with ``more_fix_crop``), in quarters
#: of the room left on each axis: corners, centre, edge midpoints and quarter points.
FIXED_CROP_POSITIONS: tuple[tuple[int, int], ...] = (
    (0, 0), (0, 4), (4, 0), (4, 4), (2, 2),
    (2, 0), (2, 4), (4, 2), (0, 2),
    (1, 1), (1, 3), (3, 1), (3, 3),
)  # fmt: skip


def multi_scale_crop_box(
    height: int,
    width: int,
    scales: Sequence[float] = MULTI_SCALES,
    max_distort: int = 1,
    generator: torch.Generator | None = None,
    output_size: int | None = None,
    fix_crop: bool = True,
) -> tuple[int, int, int, int]:
    """VideoMAE's multi-scale crop (``GroupMultiScaleCrop``): ``(top, left, crop_h, crop_w)``.

    Crop height and width are drawn from ``scales`` times the short side (a side within
    3 px of ``output_size`` becomes ``output_size``), at most ``max_distort`` steps apart in
    the list. The box sits at one of :data:`FIXED_CROP_POSITIONS` (``fix_crop``, VideoMAE's
    default), or anywhere with ``fix_crop=False``.
    """
    short = min(height, width)
    sizes = [int(short * s) for s in scales]
    if output_size is not None:
        snapped = min(output_size, short)
        sizes = [snapped if abs(size - output_size) < 3 else size for size in sizes]
    pairs = [
        (h, w)
        for i, h in enumerate(sizes)
        for j, w in enumerate(sizes)
        if abs(i - j) <= max_distort
    ]
    crop_h, crop_w = pairs[int(torch.randint(len(pairs), (1,), generator=generator))]
    if not fix_crop:
        top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
        return top, left, crop_h, crop_w
    row, col = FIXED_CROP_POSITIONS[
        int(torch.randint(len(FIXED_CROP_POSITIONS), (1,), generator=generator))
    ]
    return row * ((height - crop_h) // 4), col * ((width - crop_w) // 4), crop_h, crop_w


class VideoClipTransform:
    """``(T, H, W, 3)`` uint8 frames to a normalized ``(3, T, S, S)`` float clip.

    Training: multi-scale crop (VideoMAE) or, with ``area_scale``, a random resized crop
    of that area fraction and aspect ratio in ``[3/4, 4/3]`` (MAE-ST), resized to ``S``;
    horizontal flip with probability 0.5 when ``flip``; evaluation: short side resized to ``S``,
    center crop. Crops and resizes run on the uint8 frames (antialiased, as the reference
    pipelines' PIL / OpenCV resizes, and about twice as fast as on floats); then ``/255`` and
    per-channel normalization in one pass. The same crop and flip apply to every frame.

    Fine-tuning augmentation (VideoMAE's recipe; training only, off by default): RandAugment
    on the uint8 frames before the crop and random erasing after normalization, each drawn
    once per clip so every frame gets the same operations, magnitudes and erased box
    (VideoMAE's ``cube`` erasing), from torchvision's v2 transforms on a ``Video``.

    Args:
        img_size: Output side ``S``.
        train: Training augmentation or evaluation crop.
        mean: Per-channel mean (of ``[0, 1]`` pixels).
        std: Per-channel std.
        flip: Random horizontal flip (off for Something-Something, where it changes labels).
        scales: Multi-scale crop fractions of the short side.
        area_scale: Area fraction range of a random resized crop, instead of multi-scale.
        rand_augment_ops: RandAugment operations per clip (VideoMAE: 4); 0 disables it.
        rand_augment_magnitude: Their magnitude on timm's 0-10 scale (VideoMAE: 7),
            mapped to torchvision's 31 bins (7 -> bin 21).
        random_erasing: Probability of erasing one box with per-pixel normal noise
            (VideoMAE: 0.25); area 2-33% of the frame, aspect ratio 0.3-3.3.
    """

    def __init__(
        self,
        img_size: int,
        train: bool,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flip: bool = True,
        scales: Sequence[float] = MULTI_SCALES,
        area_scale: tuple[float, float] | None = None,
        rand_augment_ops: int = 0,
        rand_augment_magnitude: int = 7,
        random_erasing: float = 0.0,
    ) -> None:
        if not 0 <= rand_augment_magnitude <= 10:
            raise ValueError(
                f"rand_augment_magnitude is on a 0-10 scale, got {rand_augment_magnitude}"
            )
        if not 0.0 <= random_erasing <= 1.0:
            raise ValueError(f"random_erasing is a probability, got {random_erasing}")
        self.img_size = img_size
        self.area_scale = area_scale
        self.rand_augment = (
            v2.RandAugment(rand_augment_ops, magnitude=round(rand_augment_magnitude * 3))
            if rand_augment_ops > 0
            else None
        )
        self.eraser = v2.RandomErasing(random_erasing, value="random") if random_erasing else None
        self.train = train
        self.mean = list(mean)
        self.std = list(std)
        stats = torch.tensor([self.mean, self.std]).view(2, 1, 3, 1, 1)
        self._stats = {torch.uint8: stats * 255.0, torch.float32: stats}  # per input dtype
        self.flip = flip
        self.scales = tuple(scales)

    def __call__(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if not self.train:
            return self.eval_crops(frames, 1)[0]
        video = frames.permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
        if self.rand_augment is not None:  # one draw for the whole clip
            video = self.rand_augment(tv_tensors.Video(video)).as_subclass(torch.Tensor)
        height, width = video.shape[-2:]
        if self.area_scale is not None:
            top, left, crop_h, crop_w = RandomResizedCrop.get_params(
                video, list(self.area_scale), [3 / 4, 4 / 3]
            )
        else:
            top, left, crop_h, crop_w = multi_scale_crop_box(
                height, width, self.scales, 1, generator, output_size=self.img_size
            )
        size = [self.img_size, self.img_size]
        clip = TF.resized_crop(video, top, left, crop_h, crop_w, size, antialias=True)
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            clip = clip.flip(-1)
        clip = self.normalize(clip)
        if self.eraser is not None:  # one box and one noise patch for every frame
            clip = self.eraser(tv_tensors.Video(clip)).as_subclass(torch.Tensor)
        return clip.permute(1, 0, 2, 3).contiguous()  # (3, T, S, S)

    def eval_crops(self, frames: torch.Tensor, num_crops: int) -> list[torch.Tensor]:
        """Evaluation views of one clip: short side resized to ``S``, then ``num_crops``
        ``S x S`` crops evenly spread along the long side (one: centered; three: VideoMAE's
        left / center / right testing).

        Args:
            frames: ``(T, H, W, 3)`` uint8 frames.
            num_crops: Crops per clip.

        Returns:
            ``num_crops`` normalized ``(3, T, S, S)`` clips.
        """
        clip = TF.resize(frames.permute(0, 3, 1, 2), self.img_size, antialias=True)
        height, width = clip.shape[-2:]
        room_y, room_x = height - self.img_size, width - self.img_size
        views = []
        for k in range(num_crops):
            at = 0.5 if num_crops == 1 else k / (num_crops - 1)
            top, left = int(round(at * room_y)), int(round(at * room_x))
            view = clip[..., top : top + self.img_size, left : left + self.img_size]
            views.append(self.normalize(view).permute(1, 0, 2, 3).contiguous())
        return views

    def normalize(self, clip: torch.Tensor) -> torch.Tensor:
        """``(T, 3, S, S)`` uint8 (or float in ``[0, 1]``) -> normalized float32, in one pass."""
        mean, std = self._stats[torch.uint8 if clip.dtype == torch.uint8 else torch.float32]
        return clip.float().sub_(mean).div_(std)


class VideoClipDataset(FileSamples):
    """Decodes a video once and returns ``repeat_aug`` augmented clips of it.

    Args:
        samples: ``(path, label)`` pairs.
        transform: Clip transform.
        num_frames: Frames ``T`` per clip.
        sampling_rate: Frame stride of ``random`` sampling.
        sampling: ``random`` (Kinetics) or ``uniform`` (segments, SSv2).
        train: Random clip positions, or centered clips (default: the transform's mode).
        repeat_aug: Clips per decoded video; with more than 1, ``"pixels"`` is
            ``(repeat_aug, 3, T, S, S)`` and :func:`collate_repeated` flattens it.
        min_frames: Videos with fewer decodable frames are skipped (default ``num_frames``).
        test_clips: Evaluation clips per video, spread over it (:func:`eval_clip_positions`).
        test_crops: Evaluation crops per clip, spread along the long side. With more than
            one view, ``"pixels"`` is ``(test_clips * test_crops, 3, T, S, S)``, clip-major.
        views: A two-view transform taking two images (``TwoCropViews``): in training the
            clip's first and last frames become ``"views"`` (``(3, S, S)`` each) and
            ``"pixels"`` is the first view.
        target_fps: Frame rate the stride refers to (MAE-ST: 30): a clip then lasts
            ``sampling_rate * num_frames / target_fps`` seconds in any video
            (:func:`clip_indices`); ``None``: the stride counts decoded frames (VideoMAE).
    """

    def __init__(
        self,
        samples: VideoSamples,
        transform: VideoClipTransform,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: Sampling = "random",
        train: bool | None = None,
        repeat_aug: int = 1,
        min_frames: int | None = None,
        test_clips: int = 1,
        test_crops: int = 1,
        views: Any = None,
        target_fps: float | None = None,
    ) -> None:
        if test_crops < 1:
            raise ValueError(f"test_crops must be >= 1, got {test_crops}")
        self.positions = eval_clip_positions(test_clips, sampling)
        self.test_crops = test_crops
        self.views = views
        super().__init__(samples)
        self.transform = transform
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.sampling = sampling
        self.train = transform.train if train is None else train
        self.repeat_aug = repeat_aug
        self.min_frames = num_frames if min_frames is None else min_frames
        self.target_fps = target_fps

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        path, label = self.samples[index]
        generator = None if self.train else torch.Generator().manual_seed(index)
        clips_idx: list[list[int]] = []

        def wanted(count: int, fps: float | None = None) -> set[int]:
            if count < self.min_frames:
                return set()
            clips_idx.clear()
            positions = [0.5] * self.repeat_aug if self.train else self.positions
            for position in positions:
                clips_idx.append(
                    clip_indices(
                        count,
                        self.num_frames,
                        self.sampling_rate,
                        self.sampling,
                        self.train,
                        generator,
                        position,
                        fps,
                        self.target_fps,
                    )
                )
            return {i for clip in clips_idx for i in clip}

        try:
            frames = decode_frames(path, wanted)
            if not frames or not clips_idx:
                log.debug("Skipping short or empty video %s", path)
                return None
            stacks = [torch.stack([frames[i] for i in c]) for c in clips_idx]
            if self.views is not None and self.train:  # first and last frame, one view each
                first, second = stacks[0][0], stacks[0][-1]
                views = self.views(first.permute(2, 0, 1), second.permute(2, 0, 1))
                sample: dict[str, Any] = {"pixels": views[0], "views": views}
                if label is not None:
                    sample["label"] = label
                return sample
            if self.train or self.test_crops == 1:
                clips = [self.transform(stack, generator) for stack in stacks]
            else:
                clips = [
                    v for stack in stacks for v in self.transform.eval_crops(stack, self.test_crops)
                ]
        except Exception as error:  # corrupt, missing, unsupported: skip and count
            log.debug("Skipping unreadable video %s: %r", path, error)
            return None
        several = self.repeat_aug > 1 if self.train else len(clips) > 1
        pixels = torch.stack(clips) if several else clips[0]
        sample = {"pixels": pixels}
        if label is not None:
            sample["label"] = label
        return sample


def collate_repeated(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """:func:`collate_skipping`, then repeated clips ``(B, N, C, T, H, W)`` flattened to ``(B * N, ...)``.

    Labels are repeated to match, so clip ``b * N + n`` comes from video ``b``.
    """
    batch = collate_skipping(samples)
    pixels = batch["pixels"]
    if pixels.ndim == 6:
        repeats = pixels.shape[1]
        batch["pixels"] = pixels.flatten(0, 1)
        if "label" in batch:
            batch["label"] = batch["label"].repeat_interleave(repeats)
    return batch


class VideoFolder(MimDataModule):
    """Video clips for pretraining (VideoMAE / MAE-ST augmentation) and evaluation.

    Batches: ``{"pixels": (B, 3, num_frames, img_size, img_size) float, "label": (B,) long}``
    (``"label"`` for labeled sources). ``batch_size`` counts decoded videos: with
    ``repeat_aug = N`` a training batch holds ``batch_size * N`` clips, clip ``b * N + n``
    from video ``b``. The learning rate scales with videos, not clips (MAE-ST's official
    code: ``eff_batch_size = batch_size * accum_iter * world_size`` in videos).

    Args:
        root: Training source: class folder, flat folder or ``path label`` list.
        val_root: Validation source; ``None`` for no validation.
        data_prefix: Folder for relative paths in list files.
        img_size: Output side length.
        num_frames: Frames per clip.
        sampling_rate: Frame stride (4 for Kinetics in VideoMAE / MAE-ST).
        sampling: ``random`` (strided clip) or ``uniform`` (one frame per segment, SSv2).
        flip: Random horizontal flip in training.
        crop_scales: Multi-scale crop fractions of the short side.
        crop_area: Area fraction range of a random resized crop used instead of the
            multi-scale crop (MAE-ST); ``None`` for multi-scale.
        repeat_aug: Clips (and masks) per decoded video in training.
        rand_augment_ops: RandAugment operations per training clip, same for every frame
            (VideoMAE fine-tuning: 4); 0 disables it.
        rand_augment_magnitude: RandAugment magnitude on timm's 0-10 scale (VideoMAE: 7).
        random_erasing: Probability of erasing one box per training clip, the same box in
            every frame (VideoMAE fine-tuning: 0.25).
        min_frames: Shorter videos are skipped (default ``num_frames``).
        batch_size: Videos per batch (per device); training batches hold ``repeat_aug`` clips of each.
        num_workers: DataLoader worker processes.
        mean: Normalization mean per channel.
        std: Normalization std per channel.
        num_classes: Number of classes; inferred in ``setup`` for labeled sources when ``None``.
        pin_memory: Pin host memory when CUDA is available.
        views: Two frames per training video as two views (ViC-MAE): with ``num_frames=2``
            the frames are ``sampling_rate`` apart (random position), each augmented by
            its own half of an independent two-view transform (``TwoCropViews``).
        test_root: Source of the ``test`` stage (default: ``val_root``).
        test_clips: Clips per video in the ``test`` stage, spread over the video (VideoMAE:
            5 for Kinetics, 2 for SSv2).
        test_crops: Crops per clip in the ``test`` stage, spread along the long side
            (VideoMAE: 3). With more than one view a test batch's ``"pixels"`` is
            ``(B, test_clips * test_crops, 3, T, S, S)`` and the evaluation modules average
            the views' softmax per video.
        target_fps: Frame rate ``sampling_rate`` refers to (MAE-ST: 30), so a clip lasts
            ``sampling_rate * num_frames / target_fps`` seconds in every video whatever its
            rate; ``None`` (VideoMAE): ``sampling_rate`` counts decoded frames.
    """

    def __init__(
        self,
        root: str | Path,
        val_root: str | Path | None = None,
        data_prefix: str | Path | None = None,
        img_size: int = 224,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: Sampling = "random",
        flip: bool = True,
        crop_scales: Sequence[float] = MULTI_SCALES,
        crop_area: tuple[float, float] | None = None,
        repeat_aug: int = 1,
        rand_augment_ops: int = 0,
        rand_augment_magnitude: int = 7,
        random_erasing: float = 0.0,
        min_frames: int | None = None,
        batch_size: int = 32,
        num_workers: int = 8,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_classes: int | None = None,
        pin_memory: bool = True,
        test_root: str | Path | None = None,
        test_clips: int = 1,
        test_crops: int = 1,
        views: ViewPair | None = None,
        target_fps: float | None = None,
    ) -> None:
        if repeat_aug < 1:
            raise ValueError(f"repeat_aug must be >= 1, got {repeat_aug}")
        if views is not None and repeat_aug != 1:
            raise ValueError("frame-pair views take one pair per video; set repeat_aug: 1")
        super().__init__(
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=mean,
            std=std,
            num_classes=num_classes,
            views=views,
        )
        self.save_hyperparameters(ignore=["views"])
        self.root = Path(root)
        self.val_root = Path(val_root) if val_root is not None else None
        self.data_prefix = data_prefix
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.sampling = sampling
        self.flip = flip
        self.crop_scales = tuple(crop_scales)
        self.crop_area = crop_area
        self.repeat_aug = repeat_aug
        self.rand_augment_ops = rand_augment_ops
        self.rand_augment_magnitude = rand_augment_magnitude
        self.random_erasing = random_erasing
        self.min_frames = min_frames
        self.test_root = Path(test_root) if test_root is not None else self.val_root
        self.test_clips = test_clips
        self.test_crops = test_crops
        self.target_fps = target_fps
        self.test_dataset: VideoClipDataset | None = None

    def _dataset(
        self, source: Path, train: bool, classes: list[str] | None, test: bool = False
    ) -> VideoClipDataset:
        samples = scan_videos(source, classes, self.data_prefix)
        labels = [label for _, label in samples if label is not None]
        if labels and self.num_classes is None:
            self.num_classes = len(classes) if classes else max(labels) + 1
        transform = VideoClipTransform(
            self.img_size, train, self.mean, self.std, self.flip, self.crop_scales, self.crop_area,
            self.rand_augment_ops, self.rand_augment_magnitude, self.random_erasing,
        )  # fmt: skip
        return VideoClipDataset(
            samples,
            transform,
            self.num_frames,
            self.sampling_rate,
            self.sampling,
            train,
            self.repeat_aug,
            self.min_frames,
            self.test_clips if test else 1,
            self.test_crops if test else 1,
            self._frame_views() if train else None,
            self.target_fps,
        )

    def _frame_views(self) -> Any:
        if self.views is None:
            return None
        transform = self.views.build(self.img_size, self.mean, self.std)
        if not getattr(transform, "pairs_frames", False):
            raise ValueError(
                f"{type(self.views).__name__} makes both views from one image; frame pairs "
                "need views augmented independently, e.g. mimkit.data.TwoCropViews"
            )
        if self.num_frames < 2:
            raise ValueError("frame-pair views need num_frames >= 2 (the first and last frame)")
        return transform

    def preflight(self, stage: str | None = None, world_size: int = 1) -> None:
        if stage in (None, "fit"):
            require_video_source(self.root)
        if self.val_root is not None:
            require_video_source(self.val_root)
        if stage == "test" and self.test_root is not None:
            require_video_source(self.test_root)

    def setup(self, stage: str | None = None) -> None:
        """Scan the sources: the training one for ``fit`` (or no stage), the validation one
        always, the multi-view test one for ``test``."""
        classes = None
        if self.root.is_dir():
            classes = (
                sorted(
                    p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                )
                or None
            )
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.root, True, classes)
        if self.val_root is not None and self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_root, False, classes)
        if stage == "test" and self.test_root is not None and self.test_dataset is None:
            self.test_dataset = self._dataset(self.test_root, False, classes, test=True)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """Multi-view batches of the test source (``(B, V, 3, T, S, S)`` when ``V > 1``)."""
        if self.test_dataset is None:
            return self.val_dataloader()
        loader = super()._loader(self.test_dataset, train=False)
        if self.test_clips * self.test_crops > 1:
            loader.collate_fn = collate_skipping  # keep the views of each video together
        else:
            loader.collate_fn = collate_repeated
        return loader

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        """The base loader, collating repeated clips into one ``(B * repeat_aug, ...)`` batch."""
        loader = super()._loader(dataset, train)
        loader.collate_fn = collate_repeated
        return loader
