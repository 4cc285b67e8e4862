"""Video decoding, clip sampling, repeated sampling, broken videos and moving digits."""

import itertools
import math

import pytest
import torch

from mimkit.data.collate import NUM_SKIPPED, SKIPPED_PATHS
from mimkit.data.moving_digits import DIRECTIONS, MovingDigits
from mimkit.data.video import VideoClipDataset, VideoFolder, collate_repeated
from mimkit.data.video_decode import clip_indices, decode_frames
from mimkit.data.video_sources import scan_videos
from mimkit.data.video_transform import VideoClipTransform, multi_scale_crop_box

av = pytest.importorskip("av")
np = pytest.importorskip("numpy")


def write_video(
    path,
    num_frames: int = 24,
    height: int = 48,
    width: int = 64,
    rate: int = 10,
    textured: bool = False,
) -> None:
    """An mp4 whose frame ``i`` has red = 10 * i everywhere (frame index readable back);
    green is 128, or with ``textured`` a left-to-right ramp, so crops and flips show."""
    ramp = np.linspace(0, 255, width).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000
        for i in range(num_frames):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[..., 0], frame[..., 1] = 10 * i, ramp if textured else 128
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_index(clip: torch.Tensor) -> list[int]:
    """Frame indices read back from a ``(T, H, W, 3)`` uint8 clip's red channel."""
    return [round(float(f[..., 0].float().mean()) / 10) for f in clip]


def test_decode_reads_the_wanted_frames(tmp_path):
    path = tmp_path / "a.mp4"
    write_video(path)
    counts = []
    frames = decode_frames(str(path), lambda n, fps: counts.append((n, fps)) or {2, 5, 11})
    assert counts == [(24, 10.0)] and sorted(frames) == [2, 5, 11]
    assert frames[5].shape == (48, 64, 3) and frames[5].dtype == torch.uint8
    assert frame_index(torch.stack([frames[i] for i in (2, 5, 11)])) == [2, 5, 11]


def test_clip_indices_with_a_target_fps_keep_the_clip_duration():
    """MAE-ST: 4 frames at stride 4 of 30 fps span 16 frames at 30 fps, 8 at 15, 32 at 60."""
    for fps, expected in ((30, [42, 47, 52, 57]), (15, [46, 48, 50, 53]), (60, [34, 44, 54, 65])):
        got = clip_indices(100, 4, 4, "random", False, fps=float(fps), target_fps=30.0)
        assert got == expected, (fps, got)
    gen = torch.Generator().manual_seed(0)
    starts = {clip_indices(100, 4, 4, "random", True, gen, fps=15.0, target_fps=30.0)[0]
              for _ in range(50)}  # fmt: skip
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 92
    # unknown rate: the stride counts decoded frames, as without target_fps
    no_rate = clip_indices(100, 4, 4, "random", False, target_fps=30.0)
    assert no_rate == clip_indices(100, 4, 4, "random", False) == [43, 47, 51, 55]


def test_clip_dataset_with_target_fps_reads_the_same_duration(tmp_path):
    path = tmp_path / "slow.mp4"
    write_video(path, num_frames=24, rate=10)  # 2.4 s at 10 fps
    transform = VideoClipTransform(32, train=False, mean=(0.0,) * 3, std=(1.0,) * 3)
    for target_fps, step in ((20.0, 1), (None, 2)):  # 4 frames x stride 2 at 20 fps = 0.4 s
        data = VideoClipDataset(
            [(str(path), 0)], transform, num_frames=4, sampling_rate=2, target_fps=target_fps
        )
        clip = (data[0]["pixels"].permute(1, 2, 3, 0) * 255).round().to(torch.uint8)
        frames = frame_index(clip)
        assert [b - a for a, b in itertools.pairwise(frames)] == [step] * 3, (target_fps, frames)


def test_clip_indices():
    gen = torch.Generator().manual_seed(0)
    idx = clip_indices(100, 8, 4, "random", train=True, generator=gen)
    assert len(idx) == 8 and all(b - a == 4 for a, b in zip(idx, idx[1:], strict=False))
    assert clip_indices(100, 8, 4, "random", train=False) == [35 + 4 * k for k in range(8)]
    assert clip_indices(10, 4, 4, "random", train=False) == [0, 4, 8, 9]  # short: clamped
    uniform = clip_indices(80, 8, 1, "uniform", train=False)
    assert uniform == [5 + 10 * k for k in range(8)]  # middle of each of 8 segments
    rand = clip_indices(80, 8, 1, "uniform", train=True, generator=gen)
    assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(rand))


def test_multi_scale_crop_box_sizes_and_videomae_fixed_positions():
    gen = torch.Generator().manual_seed(0)
    sizes = [int(48 * s) for s in (1.0, 0.875, 0.75, 0.66)]  # 48, 42, 36, 31
    positions, shapes = set(), set()
    for _ in range(400):
        top, left, h, w = multi_scale_crop_box(48, 64, generator=gen)
        assert abs(sizes.index(h) - sizes.index(w)) <= 1  # max_distort 1
        assert top + h <= 48 and left + w <= 64
        row_step, col_step = (48 - h) // 4, (64 - w) // 4
        shapes.add((h, w))
        if row_step and col_step:  # a full-height crop has one row position only
            assert top % row_step == 0 and left % col_step == 0
            positions.add((top // row_step, left // col_step))
    # the 13 positions of VideoMAE's GroupMultiScaleCrop (fix_crop, more_fix_crop)
    assert positions == {
        (0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
        (1, 1), (1, 3), (3, 1), (3, 3),
    }  # fmt: skip
    assert len(shapes) == 10  # 4 + 3 + 3 (h, w) pairs at most one scale apart
    free = {multi_scale_crop_box(48, 64, generator=gen, fix_crop=False)[:2] for _ in range(200)}
    assert len(free) > 13  # anywhere when not fixed
    snapped = {multi_scale_crop_box(48, 64, generator=gen, output_size=40)[2] for _ in range(200)}
    assert 40 in snapped and 42 not in snapped  # 42 is within 3 px of the 40 output: snaps


def test_clip_dataset_repeated_sampling_and_normalization(tmp_path):
    path = tmp_path / "a.mp4"
    write_video(path)
    transform = VideoClipTransform(32, train=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    data = VideoClipDataset(
        [(str(path), 3)], transform, num_frames=4, sampling_rate=2, repeat_aug=3
    )
    sample = data[0]
    assert sample["pixels"].shape == (3, 3, 4, 32, 32) and sample["label"] == 3
    green = sample["pixels"][:, 1]  # flat 128/255 green, normalized by (0.5, 0.25)
    torch.testing.assert_close(
        green.mean(), torch.tensor((128 / 255 - 0.5) / 0.25), atol=0.05, rtol=0
    )
    red = sample["pixels"][:, 0].mean(dim=(-1, -2)) * 0.25 + 0.5  # (N, T) in [0, 1]
    steps = (red * 255 / 10).diff(dim=1)
    torch.testing.assert_close(steps, torch.full_like(steps, 2.0), atol=0.5, rtol=0)  # stride 2
    batch = collate_repeated([data[0], data[0]])
    assert batch["pixels"].shape == (6, 3, 4, 32, 32)
    assert batch["label"].tolist() == [3] * 6
    evaluation = VideoClipDataset(
        [(str(path), 3)], VideoClipTransform(32, train=False), num_frames=4, sampling_rate=2
    )
    torch.testing.assert_close(evaluation[0]["pixels"], evaluation[0]["pixels"])  # deterministic
    assert evaluation[0]["pixels"].shape == (3, 4, 32, 32)


def test_broken_short_and_missing_videos_are_skipped_and_counted(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
    write_video(tmp_path / "train/cat/good1.mp4")
    write_video(tmp_path / "train/dog/good2.mp4")
    write_video(tmp_path / "train/dog/short.mp4", num_frames=2)
    (tmp_path / "train/cat/corrupt.mp4").write_bytes(b"\x00\x01 not a video" * 50)
    lines = ["path,label", "train/cat/good1.mp4,0", "train/cat/corrupt.mp4,0"]
    lines += ["train/dog/short.mp4 1", "train/dog/missing.mp4 1", "train/dog/good2.mp4 1"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    assert [label for _, label in scan_videos(tmp_path / "list.csv")] == [0, 0, 1, 1, 1]
    assert [label for _, label in scan_videos(tmp_path / "train")] == [0, 0, 1, 1]

    data = VideoFolder(
        tmp_path / "list.csv", val_root=tmp_path / "train", img_size=32, num_frames=4,
        sampling_rate=2, batch_size=5, num_workers=0,
    )  # fmt: skip
    data.setup("fit")
    assert data.num_classes == 2 and data.num_frames == 4
    loader = data.train_dataloader()
    assert loader.batch_size == 5
    batch = collate_repeated([loader.dataset[i] for i in range(5)])
    assert batch["pixels"].shape == (5, 3, 4, 32, 32)  # failed reads replaced by good videos
    assert batch[NUM_SKIPPED] >= 3
    assert {p.rsplit("/", 1)[-1] for p in batch[SKIPPED_PATHS]} >= {
        "corrupt.mp4", "short.mp4", "missing.mp4"
    }  # fmt: skip
    skipped = batch[NUM_SKIPPED]
    data.on_before_batch_transfer(batch, 0)  # the DataModule pops and tallies the record
    assert data.skipped_samples["unknown"] == skipped
    assert NUM_SKIPPED not in batch
    val = next(iter(data.val_dataloader()))
    assert val["pixels"].shape[1:] == (3, 4, 32, 32)


def test_video_lists_read_videomae_v2_pretraining_lines(tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub dir").mkdir(parents=True)
    for name in ("a.mp4", "sub dir/b c.mp4", "d.mp4"):
        write_video(videos / name, num_frames=8)
    absolute = videos / "d.mp4"
    lines = ["a.mp4 0 -1", "sub dir/b c.mp4 0 -1", f"{absolute} 12 -1 5", "a.mp4,0,-1"]
    (tmp_path / "v2.txt").write_text("\n".join(lines) + "\n")
    samples = scan_videos(tmp_path / "v2.txt", data_prefix=videos)
    expected = [videos / "a.mp4", videos / "sub dir/b c.mp4", absolute, videos / "a.mp4"]
    assert samples == [(str(path), None) for path in expected]
    data = VideoClipDataset(samples[:2], VideoClipTransform(32, train=False), num_frames=4)
    assert data[1]["pixels"].shape == (3, 4, 32, 32)


def test_video_lists_keep_kinetics_formats_and_refuse_bad_lines(tmp_path):
    lines = ["path,label", "a.mp4 3", "b.mp4,0", "my clip 2.mp4 1", "c.mp4 , 4", "10.mp4\t7"]
    (tmp_path / "k400.csv").write_text("\n".join(lines) + "\n")
    samples = scan_videos(tmp_path / "k400.csv")
    assert [(path.rsplit("/", 1)[1], label) for path, label in samples] == [
        ("a.mp4", 3), ("b.mp4", 0), ("my clip 2.mp4", 1), ("c.mp4", 4), ("10.mp4", 7)
    ]  # fmt: skip
    (tmp_path / "flat.txt").write_text("# unlabeled\nx.mp4\nsub/y z.webm\n")
    assert [label for _, label in scan_videos(tmp_path / "flat.txt")] == [None, None]
    bad = {
        "a.mp4 1\nb.mp4 -1\n": r"bad\.txt:2: negative label -1",
        "frames/vid 1 300\n": r"bad\.txt:1: .*folder of decoded frames",
        "a.mp4 0 -1 2 9\n": r"bad\.txt:1: 4 numbers after the path",
        "a.mp4 3\nb.mp4 0 -1\n": r"mixes labeled and unlabeled lines",  # K400 + V2 lines
    }
    for text, message in bad.items():
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(ValueError, match=message):
            scan_videos(tmp_path / "bad.txt")


def test_repeat_aug_batches_count_clips(tmp_path):
    write_video(tmp_path / "a.mp4", textured=True)
    write_video(tmp_path / "b.mp4", textured=True)
    data = VideoFolder(
        tmp_path, img_size=32, num_frames=4, repeat_aug=2, batch_size=2, num_workers=0
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["pixels"].shape == (4, 3, 4, 32, 32)  # 2 videos x 2 clips
    assert not torch.equal(batch["pixels"][0], batch["pixels"][1])  # two different clips
    with pytest.raises(ValueError, match="repeat_aug"):
        VideoFolder(tmp_path, repeat_aug=0)


def test_moving_digits_labels_match_the_motion_and_the_digit():
    data = MovingDigits(img_size=32, num_frames=8, digit_size=12, speed=2.0, num_samples=24)
    ds = data.train_dataset
    digits = ds.digits.flatten(1)  # (M, 144)
    seen = set()
    for i in range(24):
        frames, digit, direction = ds.render(i)
        seen.add(direction)
        # direction: the displacement of the centre of mass from first to last frame
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        mass = frames.sum(dim=(1, 2))
        cx, cy = (frames * xs).sum((1, 2)) / mass, (frames * ys).sum((1, 2)) / mass
        angle = math.atan2(-(cy[-1] - cy[0]).item(), (cx[-1] - cx[0]).item())
        assert round(angle / (math.pi / 4)) % 8 == direction, DIRECTIONS[direction]
        # digit: frame 0 contains, at some position, an image of that class
        windows = torch.nn.functional.unfold(frames[:1, None], 12)[0].T  # (441, 144)
        distance = torch.cdist(windows, digits, compute_mode="donot_use_mm_for_euclid_dist").amin(0)
        assert ds.labels[distance < 1e-5].eq(digit).any()
        sample = ds[i]
        assert sample["pixels"].shape == (3, 8, 32, 32)
        assert sample["label"] == digit and sample["direction"] == direction
    assert len(seen) >= 6
    assert data.num_classes == 10
    by_direction = MovingDigits(num_samples=4, num_val_samples=0, label="direction")
    assert by_direction.num_classes == 8 and by_direction.val_dataset is None
    assert by_direction.train_dataset[1]["label"] == by_direction.train_dataset[1]["direction"]


def test_rand_augment_is_drawn_once_per_clip_as_torchvision_does():
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    torch.manual_seed(1)
    frames = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    transform = VideoClipTransform(
        32, True, flip=False, scales=(1.0,), rand_augment_ops=3, rand_augment_magnitude=9
    )
    torch.manual_seed(0)
    out = transform(frames)
    torch.manual_seed(0)  # the reference: torchvision's RandAugment on the whole clip
    ref = v2.RandAugment(3, magnitude=27)(tv_tensors.Video(frames.permute(0, 3, 1, 2)))
    ref = ref.as_subclass(torch.Tensor).float() / 255
    ref = v2.functional.normalize(ref, transform.mean, transform.std).permute(1, 0, 2, 3)
    torch.testing.assert_close(out, ref)
    plain = VideoClipTransform(32, True, flip=False, scales=(1.0,))(frames)
    assert not torch.allclose(out, plain)  # it did change the clip
    static = frames[:1].expand(4, -1, -1, -1).contiguous()
    for _ in range(5):  # a still clip stays still: every frame got the same operations
        clip = transform(static)
        assert all(torch.equal(clip[:, 0], clip[:, t]) for t in range(4))


def test_random_erasing_erases_one_box_in_every_frame():
    torch.manual_seed(1)
    frames = torch.randint(0, 256, (4, 40, 48, 3), dtype=torch.uint8)
    erasing = VideoClipTransform(32, True, random_erasing=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        plain = VideoClipTransform(32, True)(frames)
        torch.manual_seed(seed)  # same crop and flip, then the box
        erased = erasing(frames)
        changed = (erased != plain).any(0)  # (T, S, S)
        assert all(torch.equal(changed[0], changed[t]) for t in range(4))
        rows, cols = changed[0].nonzero(as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert changed[0].sum() == box  # a filled rectangle
        assert 0.02 * 32 * 32 * 0.8 <= box <= 0.34 * 32 * 32
        inside = erased[:, :, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert torch.equal(inside[:, 0], inside[:, 3])  # the same noise in every frame


def test_video_folder_passes_finetune_augmentation(tmp_path):
    write_video(tmp_path / "a.mp4")
    data = VideoFolder(
        tmp_path, img_size=32, num_frames=4, batch_size=1, num_workers=0,
        rand_augment_ops=4, random_erasing=0.25,
    )  # fmt: skip
    data.setup("fit")
    transform = data.train_dataset.transform
    assert transform.rand_augment is not None and transform.eraser is not None
    assert next(iter(data.train_dataloader()))["pixels"].shape == (1, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="0-10 scale"):
        VideoClipTransform(32, True, rand_augment_ops=2, rand_augment_magnitude=30)
