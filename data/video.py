"""Video clips from folders or Kinetics / Something-Something style lists, decoded with PyAV.

Sources (``root`` / ``val_root``) are listed by :mod:`mimkit.data.video_sources`, clip frames
chosen and decoded by :mod:`mimkit.data.video_decode`, and augmented by
:mod:`mimkit.data.video_transform`.

Each read decodes one video once and samples ``repeat_aug`` clips from it (MAE-ST's
repeated sampling), each with its own crop and flip; the model draws an independent mask
for each. Videos that cannot be opened or decoded, or are shorter than ``min_frames``,
give ``None`` and are skipped, counted and reported by the shared
:class:`~mimkit.data.base.MimDataModule` machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .base import MimDataModule
from .collate import FileSamples, collate_skipping
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .video_decode import Sampling, clip_indices, decode_frames, eval_clip_positions
from .video_sources import VideoSamples, require_video_source, scan_videos
from .video_transform import MULTI_SCALES, VideoClipTransform
from .views import ViewPair

__all__ = ["VideoClipDataset", "VideoFolder", "collate_repeated"]

log = logging.getLogger(__name__)


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
        root: Training source: class folder, flat folder or list file (``path label``, VideoMAE
            V2's ``path start total``; see :mod:`mimkit.data.video_sources`).
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
        if self.val_root is not None and self._reads_val(stage):
            require_video_source(self.val_root)
        if stage == "test" and self.test_root is not None:
            require_video_source(self.test_root)

    def _reads_val(self, stage: str | None) -> bool:
        """Whether ``stage`` reads the validation source (``test`` does without a test one)."""
        return stage != "test" or self.test_root is None

    def setup(self, stage: str | None = None) -> None:
        """Scan the sources: the training one for ``fit`` (or no stage), the validation one
        for every stage but a ``test`` that has its own, the multi-view test one for
        ``test``."""
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
        if self.val_root is not None and self.val_dataset is None and self._reads_val(stage):
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
