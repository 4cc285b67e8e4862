"""mimkit.data: LightningDataModules, datasets and transforms producing dict batches.

A batch is ``{"pixels": (B, C, H, W) or (B, C, T, H, W) normalized float, "label": (B,) long}``,
``"label"`` only where the source has labels. Unreadable files are skipped, counted and
reported (:class:`ReportSkippedSamples`), never a crash.
"""

from .base import MimDataModule
from .collate import SkipBadSamples, collate_skipping
from .digits import Digits
from .errors import DataConfigError
from .folder import ImageFolder
from .report import ReportSkippedSamples
from .synthetic import Synthetic
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, mae_train_transform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataConfigError",
    "Digits",
    "ImageFolder",
    "MimDataModule",
    "ReportSkippedSamples",
    "SkipBadSamples",
    "Synthetic",
    "collate_skipping",
    "eval_transform",
    "mae_train_transform",
]

# Two-view augmentations for contrastive methods, video, and webdataset shards.
from .moving_digits import MovingDigits  # noqa: E402
from .shards import Shards  # noqa: E402
from .video import VideoFolder  # noqa: E402
from .views import PixelShiftViews, TwoCropViews, ViewPair  # noqa: E402

__all__ += ["MovingDigits", "PixelShiftViews", "Shards", "TwoCropViews", "VideoFolder", "ViewPair"]
