"""Images or video clips streamed from webdataset tar shards (``mimkit shards write``).

Shards are split across ranks, then across each rank's DataLoader workers (rank ``r`` of
``W`` reads shards ``r, r + W, ...``; its worker ``w`` of ``N`` every ``N``-th of those from
its ``w``-th), and samples are shuffled in a buffer. Every rank must see the same number of
batches (DDP waits at every step for all of them), so with several ranks an epoch has a
fixed length, ``epoch_length`` samples over all ranks: either each worker passes over its
own shards again as needed to fill its share (like the padding of PyTorch's
``DistributedSampler``), or, with ``resampled=True``, every worker draws shards with
replacement forever, cut into epochs. Samples are decoded with the same transforms as
:class:`~mimkit.data.ImageFolder`; a sample that cannot be decoded (or a shard that cannot
be read) is skipped and counted with the shared :class:`~mimkit.data.MimDataModule`
machinery, and the next good sample takes its place so batches stay full.
"""

from __future__ import annotations

import io
import logging
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .base import MimDataModule
from .collate import NUM_SKIPPED, SKIPPED_PATHS, collate_skipping
from .device_decode import DeviceDecodeCrop, collate_encoded, encode_image
from .errors import DataConfigError
from .tar_reader import read_shard
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, mae_train_transform

log = logging.getLogger(__name__)

IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
VIDEO_KEYS: tuple[str, ...] = ("mp4", "avi", "mkv", "webm", "mov")


class VideoDecoder:
    """Raw ``mp4`` bytes to ``{"pixels": (3, T, S, S), "label"?}`` (PyAV, the ``[video]`` extra).

    Clip sampling and the transform are the video DataModule's (:mod:`mimkit.data.video`),
    applied to the in-memory file.

    Args:
        img_size: Output side ``S``.
        train: Random clip position and augmentation, or the centered evaluation clip.
        num_frames: Frames ``T`` per clip.
        sampling_rate: Frame stride.
        mean: Per-channel mean.
        std: Per-channel std.
    """

    def __init__(
        self,
        img_size: int,
        train: bool,
        num_frames: int,
        sampling_rate: int = 4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        from .video_transform import VideoClipTransform

        self.transform = VideoClipTransform(img_size, train, mean, std)
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        from .video import VideoClipDataset

        key = next((k for k in VIDEO_KEYS if k in raw), None)
        if key is None:
            return None
        label = int(raw["cls"]) if "cls" in raw else None
        video = io.BytesIO(raw[key])
        clips = VideoClipDataset(
            [(video, label)],  # type: ignore[list-item]  # PyAV opens file objects too
            self.transform,
            num_frames=self.num_frames,
            sampling_rate=self.sampling_rate,
        )
        return clips[0]


class EncodedImageSample:
    """Raw image sample to ``{"encoded", "crop", "flip", "label"?}``, decoded later on the
    training device (:mod:`mimkit.data.device_decode`).

    Args:
        scale: Area fraction range of the random resized crop.
    """

    def __init__(self, scale: tuple[float, float]) -> None:
        self.scale = scale

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        key = image_key(raw)
        if key is None:
            return None
        sample = encode_image(raw[key], self.scale)
        if "cls" in raw:
            sample["label"] = int(raw["cls"])
        return sample


def rank_shards(urls: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The shards rank ``rank`` of ``world_size`` reads in one pass: ``urls[rank::world_size]``."""
    return list(urls[rank::world_size])


def image_key(raw: dict[str, Any]) -> str | None:
    """The key of a raw sample's image bytes (``jpg``, ``png``, ...), ``None`` without one."""
    return next((k for k in IMAGE_KEYS if k in raw), None)


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard URLs from brace patterns (``train-{000000..000127}.tar``), ``::``-joined or listed."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    expanded: list[str] = []
    for pattern in patterns:
        for part in pattern.split("::"):
            expanded.extend(braceexpand.braceexpand(part))
    if not expanded:
        raise ValueError(f"No shard URLs in {urls!r}.")
    return expanded


class ShardStream(IterableDataset):
    """Decoded samples of this rank's and this worker's shards.

    Args:
        urls: Shard URLs (paths, ``pipe:`` commands, ...).
        transform: Maps an RGB PIL image to a float tensor ``(3, S, S)``; or, with
            ``raw=True``, a callable mapping a raw sample dict to a sample dict or ``None``
            (:class:`VideoDecoder`, :class:`EncodedImageSample`).
        rank: Global rank of this process.
        world_size: Number of ranks.
        shuffle_buffer: Samples held in the shuffle buffer (0: no shuffling); the shard
            order is shuffled too.
        resampled: Draw shards with replacement forever (needs ``samples_per_rank``).
        samples_per_rank: Samples this rank yields per epoch, split in whole batches across
            the workers that have shards; without ``resampled`` a worker passes over its
            shards again until it has served its share. ``None`` for one pass over the shards.
        seed: Base seed of the shard and buffer shuffling.
        batch_size: Batch size of the loader (each worker's quota is whole batches).
    """

    def __init__(
        self,
        urls: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        samples_per_rank: int | None = None,
        seed: int = 0,
        batch_size: int = 1,
        raw: bool = False,
    ) -> None:
        if resampled and samples_per_rank is None:
            raise ValueError("resampled shards are an infinite stream: set epoch_length.")
        self.urls = list(urls)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.samples_per_rank = samples_per_rank
        self.seed = seed
        self.batch_size = batch_size
        self.raw = raw
        self.epoch = 0

    def __len__(self) -> int:
        if self.samples_per_rank is None:
            raise TypeError("a single pass over shards has no known length")
        return self.samples_per_rank

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def rank_urls(self) -> list[str]:
        """This rank's shards, ``urls[rank::world_size]`` (all of them when resampled)."""
        return self.urls if self.resampled else rank_shards(self.urls, self.rank, self.world_size)

    def _quota(self, worker: int, num_workers: int) -> int | None:
        if self.samples_per_rank is None:
            return None
        readers = num_workers if self.resampled else min(num_workers, len(self.rank_urls()))
        if worker >= readers:
            return 0
        share, extra = divmod(self.samples_per_rank // self.batch_size, readers)
        return (share + (worker < extra)) * self.batch_size

    def _passes(self, rng: random.Random, worker: int, num_workers: int) -> Iterator[Iterator[str]]:
        """The worker's shard URLs, pass by pass: one endless pass of draws when resampled;
        else its shards in a new order each pass, once, or again while a quota is set."""
        if self.resampled:
            yield iter(lambda: rng.choice(self.urls), None)  # endless: never returns None
            return
        mine = self.rank_urls()[worker::num_workers]
        while mine:
            if self.shuffle_buffer > 0:
                rng.shuffle(mine)
            yield iter(list(mine))
            if self.samples_per_rank is None:
                return

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = self._worker()
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker)))
        failures: list[str] = []

        def read(urls: Iterator[str]) -> Iterator[dict[str, Any]]:
            for url in urls:
                try:
                    yield from read_shard(url)
                except Exception as error:  # unreadable or corrupt shard: skip the rest of it
                    failures.append(f"{url}: {error!r}"[:200])
                    log.warning("Skipping the rest of unreadable shard %s: %r", url, error)

        def passes() -> Iterator[dict[str, Any]]:
            for urls in self._passes(rng, worker, num_workers):
                samples = read(urls)
                if self.shuffle_buffer > 0:  # drained at the end of each pass
                    initial = min(self.shuffle_buffer, 100)
                    samples = wds.shuffle(self.shuffle_buffer, initial, rng=rng)(samples)
                empty = True
                for sample in samples:
                    empty = False
                    yield sample
                if empty:  # nothing readable: another pass would not help
                    return

        quota = self._quota(worker, num_workers)
        if quota == 0:
            return
        samples = passes()
        served = broken = 0
        held: dict[str, Any] | None = None  # one sample held back, to carry trailing failures
        for raw in samples:
            if quota is not None and served >= quota:
                break
            sample = self.decode(raw)
            if sample is None:
                failures.append(f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}")
                broken += 1
                if quota is not None and broken > 2 * quota:
                    raise RuntimeError(
                        f"worker {worker} of rank {self.rank} read {broken} undecodable and "
                        f"{served} good samples from its shards, repeating them to fill its "
                        f"{quota} samples of this epoch; are they images? {failures[:3]}"
                    )
                continue
            served += 1
            if held is not None:
                yield self._with_failures(held, failures)
            held = sample
        if held is not None:
            yield self._with_failures(held, failures)
        elif failures:
            log.warning(
                "Worker %d of rank %d served no sample: %s", worker, self.rank, failures[:5]
            )

    @staticmethod
    def _with_failures(sample: dict[str, Any], failures: list[str]) -> dict[str, Any]:
        """``sample`` carrying (and ``failures`` emptied of) the failures seen so far."""
        if failures:
            sample[NUM_SKIPPED], sample[SKIPPED_PATHS] = len(failures), list(failures)
            failures.clear()
        return sample

    def decode(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """``{"pixels": (3, S, S), "label"?}`` of a raw tar sample, ``None`` when unreadable."""
        if self.raw:
            try:
                return self.transform(raw)  # type: ignore[arg-type]
            except Exception as error:  # the decoder's own failures: skip and count
                log.debug("Skipping undecodable sample %s: %r", raw.get("__key__"), error)
                return None
        key = image_key(raw)
        if key is None:
            return None
        try:
            with Image.open(io.BytesIO(raw[key])) as image:
                sample: dict[str, Any] = {"pixels": self.transform(image.convert("RGB"))}
            if "cls" in raw:
                sample["label"] = int(raw["cls"])
        except Exception as error:  # truncated, corrupt, unsupported: skip and count
            log.debug("Skipping undecodable sample %s: %r", raw.get("__key__"), error)
            return None
        return sample


class _EpochLoader(DataLoader):
    """A DataLoader that tells its stream which epoch each new iterator is for."""

    def __iter__(self) -> Any:
        self.dataset.epoch = getattr(self, "_next_epoch", 0)  # type: ignore[attr-defined]
        self._next_epoch = self.dataset.epoch + 1  # type: ignore[attr-defined]
        return super().__iter__()


class Shards(MimDataModule):
    """Images from webdataset tar shards for pretraining (MAE augmentation) and evaluation.

    Samples hold an image under ``jpg``/``jpeg``/``png``/``webp`` and optionally an integer
    ``cls``, as ``mimkit shards write`` produces.

    Batches: ``{"pixels": (B, 3, img_size, img_size) float, "label": (B,) long (if labeled)}``.

    Args:
        urls: Training shards: a brace pattern (``/shards/train-{000000..001023}.tar``), several
            joined by ``::``, or a list.
        val_urls: Validation shards (read once, in order, no augmentation); ``None`` for none.
        img_size: Output side length.
        batch_size: Samples per batch (per device).
        num_workers: DataLoader worker processes.
        epoch_length: Training samples per epoch over all ranks (each worker passes over its
            shards again as needed to serve its share); ``None`` for one pass over the shards,
            with one device only (ranks would see different numbers of batches).
        resampled: Draw training shards with replacement, an endless stream cut into epochs of
            ``epoch_length`` samples (webdataset's multi-node setting).
        shuffle_buffer: Shuffle buffer size in samples (0 to keep the shard order).
        crop_scale: Area fraction range of the training random resized crop.
        mean: Normalization mean per channel.
        std: Normalization std per channel.
        num_classes: Number of classes (labels come from ``cls``), ``None`` when unknown.
        seed: Seed of the shard order and shuffle buffer.
        num_frames: Frames ``T`` per clip for video shards (``mp4`` samples; batches are then
            ``(B, 3, T, S, S)``); ``None`` for images.
        sampling_rate: Frame stride of video clips.
        pin_memory: Pin host memory when CUDA is available.
        decode_on_device: Training images are decoded (nvJPEG on CUDA), cropped, resized,
            flipped and normalized on the model's device; the workers only read the shards and
            draw each image's crop box and flip bit (:mod:`mimkit.data.device_decode`, as
            ``ImageFolder(decode_on_device=True)``). Images only; validation is unchanged.
    """

    def __init__(
        self,
        urls: str | list[str],
        val_urls: str | list[str] | None = None,
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 8,
        epoch_length: int | None = None,
        resampled: bool = False,
        shuffle_buffer: int = 5000,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_classes: int | None = None,
        seed: int = 0,
        num_frames: int | None = None,
        sampling_rate: int = 4,
        pin_memory: bool = True,
        decode_on_device: bool = False,
    ) -> None:
        if decode_on_device and num_frames is not None:
            raise ValueError(
                "decode_on_device decodes JPEG images; video shards (num_frames set) are "
                "decoded by PyAV in the workers: drop one of the two"
            )
        super().__init__(
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            mean=mean,
            std=std,
            num_classes=num_classes,
        )
        self.save_hyperparameters()
        self.urls = expand_urls(urls)
        self.val_urls = expand_urls(val_urls) if val_urls is not None else None
        self.epoch_length = epoch_length
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.crop_scale = crop_scale
        self.seed = seed
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.persistent_workers = False  # each epoch's iterator carries its epoch number
        self.decode_on_device = decode_on_device
        if decode_on_device:
            self.batch_decoder = DeviceDecodeCrop(img_size, self.mean, self.std)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def preflight(self, stage: str | None = None, world_size: int = 1) -> None:
        """Every rank needs shards and, with several ranks, an ``epoch_length``; local shard
        files must exist.

        Raises:
            DataConfigError: several ranks without ``epoch_length``, or fewer shards than ranks.
            FileNotFoundError: a local shard file (no ``scheme:`` prefix) is missing.
        """
        if stage not in (None, "fit"):
            urls = self.val_urls or []
        else:
            urls = self.urls + (self.val_urls or [])
            if world_size > 1 and self.epoch_length is None:
                raise DataConfigError(
                    f"Shards on {world_size} ranks needs data.epoch_length (training samples "
                    "per epoch over all ranks, e.g. the dataset size): every rank must see the "
                    "same number of batches, and a single pass over unevenly split shards "
                    "would leave ranks waiting on each other"
                )
            if world_size > 1 and not self.resampled and len(self.urls) < world_size:
                raise DataConfigError(
                    f"{len(self.urls)} training shards for {world_size} ranks: each rank reads "
                    "its own shards, so write at least one per rank (better 10x more), or set "
                    "data.resampled: true"
                )
        missing = [url for url in urls if ":" not in url and not Path(url).expanduser().exists()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise FileNotFoundError(f"Shard {missing[0]}{more} does not exist.")

    def setup(self, stage: str | None = None) -> None:
        """Build the streams for this rank; warn when some workers would get no shard."""
        rank, world_size = self._ranks()
        self.preflight(stage, world_size)
        workers = max(1, self.num_workers)
        per_rank_shards = len(rank_shards(self.urls, rank, world_size))
        if not self.resampled and per_rank_shards < workers:
            warnings.warn(
                f"{per_rank_shards} training shards for this rank's {workers} workers: "
                f"{workers - per_rank_shards} of them get no shard and stay idle. Write more, "
                "smaller shards (at least ranks x workers), or set resampled=True with an "
                "epoch_length.",
                stacklevel=2,
            )
        per_rank = None
        if self.epoch_length is not None:
            per_rank = self.epoch_length // world_size // self.batch_size * self.batch_size
        if stage in (None, "fit"):
            self.train_dataset = ShardStream(
                self.urls,
                self._decoder(train=True),
                rank=rank,
                world_size=world_size,
                shuffle_buffer=self.shuffle_buffer,
                resampled=self.resampled,
                samples_per_rank=per_rank,
                seed=self.seed,
                batch_size=self.batch_size,
                raw=self.num_frames is not None or self.decode_on_device,
            )
        if self.val_urls is not None:
            self.val_dataset = ShardStream(
                self.val_urls,
                self._decoder(train=False),
                raw=self.num_frames is not None,
                rank=rank,
                world_size=world_size,
                shuffle_buffer=0,
            )

    def _decoder(self, train: bool) -> Callable[[Any], Any]:
        if train and self.decode_on_device:
            return EncodedImageSample(self.crop_scale)
        if self.num_frames is not None:
            return VideoDecoder(
                self.img_size, train, self.num_frames, self.sampling_rate, self.mean, self.std
            )
        if train:
            return mae_train_transform(self.img_size, self.mean, self.std, self.crop_scale)
        return eval_transform(self.img_size, self.mean, self.std)

    def _loader(self, dataset: Any, train: bool) -> DataLoader:
        if dataset is None:
            split = "train" if train else "validation"
            raise RuntimeError(f"{type(self).__name__} has no {split} dataset; call setup() first.")
        return _EpochLoader(
            dataset,
            batch_size=self.batch_size,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            collate_fn=collate_encoded if train and self.decode_on_device else collate_skipping,
        )
