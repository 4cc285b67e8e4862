"""Writing image sources into webdataset shards and streaming them back with `Shards`."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mimkit.cli import main
from mimkit.data.collate import collate_skipping
from mimkit.data.errors import DataConfigError
from mimkit.data.shard_writer import ShardWriter, parse_size, write_shards
from mimkit.data.shards import Shards, ShardStream, expand_urls
from mimkit.data.transforms import eval_transform


def make_images(folder: Path, count: int, corrupt: tuple[int, ...] = ()) -> Path:
    """``count`` random 16x16 images (JPEG and PNG) and a list file labelling image i with i."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        suffix = "jpg" if i % 2 else "png"
        path = folder / f"img{i:03d}.{suffix}"
        if i in corrupt:
            path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        else:
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        lines.append(f"{path.name} {i}")
    listing = folder / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def members(shard: str) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def labels_of(loader) -> list[int]:
    return [int(label) for batch in loader for label in batch["label"]]


def test_parse_size():
    assert parse_size("1GB") == 10**9
    assert parse_size("64KiB") == 65536
    assert parse_size(123) == 123
    with pytest.raises(ValueError):
        parse_size("lots")


def test_shards_write_mistakes_are_one_line(tmp_path, capsys):
    listing = make_images(tmp_path / "images", 2)
    for out, size, message in [
        ("s.tar", "1GB", "Shard pattern '{}' needs a number field such as %06d."),
        ("s-%03d.tar", "1QB", "Cannot read the size '1QB'"),
    ]:
        path = str(tmp_path / out)
        args = ["shards", "write", "--source", str(listing), "--out", path, "--shard-size", size]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"mimkit shards: error: {message.format(path)}" in err and "Traceback" not in err


def test_write_shards_splits_by_size_and_records_samples(tmp_path):
    listing = make_images(tmp_path / "images", 20, corrupt=(5,))  # 5: a corrupt .jpg, copied
    pattern = str(tmp_path / "shards" / "train-%04d.tar")
    shards = write_shards(listing, pattern, shard_size="3KB", progress=False)
    assert len(shards) > 2 and shards[0].endswith("train-0000.tar")
    keys, labels = [], []
    for shard in shards:
        content = members(shard)
        for name, data in content.items():
            key, ext = name.split(".", 1)
            assert ext in ("jpg", "cls", "json")
            if ext == "cls":
                keys.append(key)
                labels.append(int(data))
            if ext == "json":
                assert json.loads(data)["label"] == int(content[f"{key}.cls"])
            if ext == "jpg" and key != "000000005":
                Image.open(__import__("io").BytesIO(data)).verify()  # PNGs re-encoded as JPEG
    assert labels == list(range(20)) and keys == [f"{i:09d}" for i in range(20)]
    with tarfile.open(shards[0]) as tar:  # one plain header per member: no PAX records
        assert all(not m.pax_headers and isinstance(m.mtime, int) for m in tar.getmembers())
    manifest = json.loads((tmp_path / "shards" / "train.manifest.json").read_text())
    assert manifest["done"] and sum(s["count"] for s in manifest["shards"]) == 20


def test_interrupted_write_resumes_to_the_same_shards(tmp_path, monkeypatch):
    listing = make_images(tmp_path / "images", 16)
    full = write_shards(listing, str(tmp_path / "full" / "s-%03d.tar"), shard_size="2KB")
    pattern = str(tmp_path / "resumed" / "s-%03d.tar")
    calls = {"n": 0}
    original = ShardWriter._sample

    def dies_at_sample_9(self, index, path, label):
        calls["n"] += 1
        if index == 9:
            raise KeyboardInterrupt
        return original(self, index, path, label)

    monkeypatch.setattr(ShardWriter, "_sample", dies_at_sample_9)
    with pytest.raises(KeyboardInterrupt):
        write_shards(listing, pattern, shard_size="2KB", progress=False)
    done_before = json.loads((tmp_path / "resumed" / "s.manifest.json").read_text())["shards"]
    assert done_before and not any(
        p.name.endswith(".tar") and p.name not in {Path(s["name"]).name for s in done_before}
        for p in (tmp_path / "resumed").iterdir()
    )
    monkeypatch.setattr(ShardWriter, "_sample", original)
    calls["n"] = 0
    resumed = write_shards(listing, pattern, shard_size="2KB", progress=False)
    assert [Path(p).name for p in resumed] == [Path(p).name for p in full]
    for a, b in zip(full, resumed, strict=True):
        assert members(a) == members(b)


def test_stream_splits_shards_across_ranks_and_workers_without_duplicates(tmp_path):
    listing = make_images(tmp_path / "images", 24)
    shards = write_shards(listing, str(tmp_path / "s-%03d.tar"), max_count=4, progress=False)
    assert len(shards) == 6
    seen = []
    for rank in range(2):
        stream = ShardStream(shards, eval_transform(16), rank=rank, world_size=2, shuffle_buffer=8)
        loader = DataLoader(stream, batch_size=4, num_workers=2, collate_fn=collate_skipping)
        got = labels_of(loader)
        # rank r reads shards r, r + 2, r + 4 (4 samples each), its two workers share them
        assert sorted(got) == [i for i in range(24) if i // 4 % 2 == rank]
        seen += got
    assert sorted(seen) == list(range(24))


def test_ranks_with_unequal_shards_serve_equal_epochs(tmp_path):
    """Rank 0 holds 3 shards and rank 1 two, of unequal sizes: with an epoch_length both serve
    the same batches (DDP would otherwise wait forever), each reading only its own shards,
    every one of their samples at least once, repeating some to fill the share."""
    listing = make_images(tmp_path / "images", 22)
    shards = write_shards(listing, str(tmp_path / "s-%03d.tar"), max_count=5, progress=False)
    assert len(shards) == 5  # 5 + 5 + 5 + 5 + 2 samples: rank 0 gets 12, rank 1 gets 10
    per_rank = []
    for rank in range(2):
        stream = ShardStream(shards, eval_transform(16), rank=rank, world_size=2, shuffle_buffer=4,
                             samples_per_rank=16, batch_size=4)  # fmt: skip
        loader = DataLoader(stream, batch_size=4, num_workers=2, collate_fn=collate_skipping)
        assert len(loader) == 4
        per_rank.append([labels_of(loader), labels_of(loader)])  # two epochs
    for rank, epochs in enumerate(per_rank):
        own = {i for i in range(22) if i // 5 % 2 == rank}
        for got in epochs:
            assert len(got) == 16 and set(got) == own


def test_fewer_shards_than_workers_warns_and_never_duplicates(tmp_path):
    listing = make_images(tmp_path / "images", 8)
    write_shards(listing, str(tmp_path / "s-%03d.tar"), max_count=4, progress=False)
    data = Shards(str(tmp_path / "s-{000..001}.tar"), img_size=16, batch_size=2, num_workers=3)
    with pytest.warns(UserWarning, match="2 training shards for this rank's 3 workers"):
        data.setup("fit")
    assert sorted(labels_of(data.train_dataloader())) == list(range(8))


def test_resampled_stream_has_a_fixed_epoch_length(tmp_path):
    listing = make_images(tmp_path / "images", 8)
    write_shards(listing, str(tmp_path / "s-%03d.tar"), max_count=4, progress=False)
    data = Shards(
        str(tmp_path / "s-{000..001}.tar"),
        img_size=16,
        batch_size=4,
        num_workers=2,
        resampled=True,
        epoch_length=20,  # 5 batches, more than one pass over the 8 samples
    )
    data.setup("fit")
    loader = data.train_dataloader()
    assert len(loader) == 5
    first, second = labels_of(loader), labels_of(loader)
    assert len(first) == len(second) == 20
    assert first != second  # each epoch draws other shards / another shuffle
    assert set(first) <= set(range(8))


def test_corrupt_samples_are_skipped_counted_and_replaced(tmp_path):
    listing = make_images(tmp_path / "images", 12, corrupt=(3, 7))
    write_shards(listing, str(tmp_path / "s-%03d.tar"), progress=False)
    data = Shards(str(tmp_path / "s-000.tar"), img_size=16, batch_size=5, num_workers=0)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert [len(b["label"]) for b in batches] == [5, 5]  # 10 good samples, batches stay full
    assert sum(b["num_skipped"] for b in batches) == 2
    assert all(b["pixels"].shape == (5, 3, 16, 16) for b in batches)
    paths = [p for b in batches for p in b["skipped_paths"]]
    assert any("000000003" in p for p in paths) and any("000000007" in p for p in paths)
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert sorted(labels) == [i for i in range(12) if i not in (3, 7)]


def test_shards_that_never_decode_fail_instead_of_looping(tmp_path):
    listing = make_images(tmp_path / "images", 4, corrupt=(0, 1, 2, 3))
    write_shards(listing, str(tmp_path / "s-%03d.tar"), progress=False)
    data = Shards(str(tmp_path / "s-000.tar"), img_size=16, batch_size=2, num_workers=0,
                  epoch_length=4, shuffle_buffer=0)  # fmt: skip
    data.setup("fit")
    with pytest.raises(RuntimeError, match="undecodable"):
        list(data.train_dataloader())


def test_preflight_stops_settings_that_would_hang_or_find_nothing(tmp_path):
    listing = make_images(tmp_path / "images", 8)
    write_shards(listing, str(tmp_path / "s-%03d.tar"), max_count=4, progress=False)
    urls = str(tmp_path / "s-{000..001}.tar")
    Shards(urls, epoch_length=8).preflight("fit", world_size=2)
    with pytest.raises(DataConfigError, match="needs data.epoch_length"):
        Shards(urls).preflight("fit", world_size=2)
    Shards(urls).preflight("fit", world_size=1)  # one pass on one device is fine
    with pytest.raises(DataConfigError, match="2 training shards for 4 ranks"):
        Shards(urls, epoch_length=8).preflight("fit", world_size=4)
    Shards(urls, epoch_length=8, resampled=True).preflight("fit", world_size=4)
    with pytest.raises(FileNotFoundError, match=r"s-002.tar and 1 more does not exist"):
        Shards(str(tmp_path / "s-{000..003}.tar")).preflight("fit")
    Shards("pipe:cat missing.tar").preflight("fit")  # not a local file: not checked


def test_device_decoding_draws_the_same_crops_and_counts_broken_samples(tmp_path):
    listing = make_images(tmp_path / "images", 12, corrupt=(3, 7))
    write_shards(listing, str(tmp_path / "s-%03d.tar"), progress=False)
    batches = {}
    for on_device in (False, True):
        data = Shards(
            str(tmp_path / "s-000.tar"), img_size=16, batch_size=5, num_workers=0,
            crop_scale=(0.3, 1.0), decode_on_device=on_device,
        )  # fmt: skip
        data.setup("fit")
        torch.manual_seed(0)
        batches[on_device] = [
            data.on_before_batch_transfer(batch, 0) for batch in data.train_dataloader()
        ]
        assert data.skipped_samples["unknown"] == 2
    for worker, device in zip(batches[False], batches[True], strict=True):
        assert set(device) == {"pixels", "label"}
        assert torch.equal(worker["label"], device["label"])
        assert device["pixels"].shape == (5, 3, 16, 16)
        # the same crop boxes and flips; PIL's and torchvision's bicubic differ by a few levels
        levels = (worker["pixels"] - device["pixels"]).abs() * 0.225 * 255
        assert levels.mean() < 1.5, levels.mean()
    with pytest.raises(ValueError, match="video shards"):
        Shards(str(tmp_path / "s-000.tar"), num_frames=4, decode_on_device=True)


@pytest.mark.parametrize("cut_index", [0, 1])
def test_a_truncated_shard_loses_only_its_tail(tmp_path, cut_index):
    listing = make_images(tmp_path / "images", 12)
    urls = write_shards(listing, str(tmp_path / "s-%03d.tar"), max_count=6, progress=False)
    cut = Path(urls[cut_index])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a copy killed halfway
    samples = list(ShardStream(urls, eval_transform(16), shuffle_buffer=0))
    labels = [s["label"] for s in samples]
    kept = len(labels) - 6
    assert 0 < kept < 6
    if cut_index == 0:
        assert labels == list(range(kept)) + list(range(6, 12))
    else:  # the last shard: its failure must still be reported, on the last sample served
        assert labels == list(range(6)) + list(range(6, 6 + kept))
    assert all(s["pixels"].shape == (3, 16, 16) for s in samples)
    reports = [p for s in samples for p in s.get("skipped_paths", [])]
    assert len(reports) == 1 and urls[cut_index] in reports[0] and "truncated" in reports[0]
    assert sum(s.get("num_skipped", 0) for s in samples) == 1


def test_expand_urls():
    assert expand_urls("a-{00..02}.tar::b.tar") == ["a-00.tar", "a-01.tar", "a-02.tar", "b.tar"]


def test_pretrain_on_shards_through_the_cli(tmp_path):
    listing = make_images(tmp_path / "images", 16)
    assert (
        main(
            [
                "shards",
                "write",
                "--source",
                str(listing),
                "--out",
                str(tmp_path / "s-%03d.tar"),
                "--max-count",
                "8",
            ]
        )
        == 0
    )
    args = [
        "pretrain", "fit", "--config", str(Path(__file__).parents[1] / "recipes/quickstart/mae_digits.yaml"),
        "--data", "mimkit.data.shards.Shards", "--data.urls", str(tmp_path / "s-{000..001}.tar"),
        "--data.img_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.epoch_length", "8",
        "--model.encoder.init_args.model_kwargs", '{"depth": 1, "embed_dim": 64, "num_heads": 2}',
        "--model.decoder_depth", "1", "--model.warmup_epochs", "0",
        "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3


def test_two_processes_train_on_unevenly_split_shards(tmp_path):
    """Rank 0 gets shards of 5 + 5 + 2 samples, rank 1 of 5 + 5: two real DDP processes
    (`mimkit pretrain fit --trainer.devices 2`) finish both epochs instead of waiting on each
    other at the end of rank 1's shards."""
    listing = make_images(tmp_path / "images", 22)
    write_shards(listing, str(tmp_path / "s-%03d.tar"), max_count=5, progress=False)
    mimkit = Path(sys.executable).with_name("mimkit")
    recipe = Path(__file__).parents[1] / "recipes/quickstart/mae_digits.yaml"
    args = [
        "pretrain", "fit", "--config", str(recipe),
        "--data", "mimkit.data.Shards", "--data.urls", str(tmp_path / "s-{000..004}.tar"),
        "--data.img_size", "32", "--data.batch_size", "4", "--data.num_workers", "1",
        "--data.epoch_length", "24",
        "--model.encoder.init_args.model_kwargs", '{"depth": 1, "embed_dim": 64, "num_heads": 2}',
        "--model.decoder_depth", "1", "--model.warmup_epochs", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(
        [str(mimkit), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 3  # 24 samples / 2 ranks / batch 4, two epochs


def make_videos(folder: Path, count: int, frames: int = 12) -> Path:
    """``count`` small mp4 clips (32x32, frame i of video v filled with v * 10 + i) and a csv."""
    av = pytest.importorskip("av")
    folder.mkdir(parents=True)
    lines = []
    for v in range(count):
        path = folder / f"clip{v}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=8)
            stream.width = stream.height = 32
            stream.pix_fmt = "yuv420p"
            for i in range(frames):
                pixels = np.full((32, 32, 3), (v * 60 + i * 4) % 256, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        lines.append(f"{path.name},{v}")
    listing = folder / "train.csv"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def test_video_shards_hold_the_files_and_stream_clips(tmp_path):
    listing = make_videos(tmp_path / "videos", 4)
    shards = write_shards(listing, str(tmp_path / "v-%03d.tar"), kind="video", progress=False)
    content = members(shards[0])
    assert content["000000002.mp4"] == (tmp_path / "videos/clip2.mp4").read_bytes()
    assert int(content["000000002.cls"]) == 2
    data = Shards(shards[0], img_size=16, batch_size=2, num_workers=0, num_frames=4,
                  sampling_rate=2, val_urls=shards[0], mean=(0.0,) * 3, std=(1.0,) * 3)  # fmt: skip
    data.setup("fit")
    batches = list(data.val_dataloader())
    assert [tuple(b["pixels"].shape) for b in batches] == [(2, 3, 4, 16, 16)] * 2
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert labels == [0, 1, 2, 3]
    # evaluation clips are centered: 12 frames, 4 at stride 2 -> frames 2, 4, 6, 8
    expected = torch.tensor([(v * 60 + i * 4) % 256 for v in range(4) for i in (2, 4, 6, 8)])
    got = torch.cat([b["pixels"] for b in batches])[:, 0, :, 8, 8].flatten() * 255
    torch.testing.assert_close(got, expected.float(), atol=6, rtol=0)  # lossy codec
    train = next(iter(data.train_dataloader()))
    assert train["pixels"].shape == (2, 3, 4, 16, 16)
