"""The VideoMAE quickstart end to end: training steps, checkpoint metadata, frame strips and GIFs."""

from pathlib import Path

import torch
from PIL import Image
from tiny import CPU_TRAINER, FAST_TRAINER

from mimkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_videomae_quickstart_writes_strip_and_gif(tmp_path):
    args = [
        "pretrain",
        "fit",
        "--config",
        str(ROOT / "recipes/quickstart/videomae_moving_digits.yaml"),
        *FAST_TRAINER,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--model.encoder.init_args.model_kwargs",
        '{"depth": 1, "class_token": false, "global_pool": "avg"}',
        "--data.batch_size",
        "4",
        "--preview.every_n_steps",
        "1",
        "--preview.num_images",
        "2",
    ]
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["mimkit"]["method"] == "VideoMAE"
    encoder = ckpt["mimkit"]["encoder"]
    assert encoder["num_frames"] == 8 and encoder["tubelet_size"] == 2
    assert ckpt["state_dict"]["encoder.patch_embed.proj.weight"].shape == (192, 3, 2, 4, 4)
    with Image.open(tmp_path / "previews/step_0000001.png") as strip:
        # 8 frames across (32 px + 2 px padding each), 2 clips x 3 rows down
        assert strip.size == (8 * 34 + 2, 2 * 3 * 34 + 2)
    with Image.open(tmp_path / "previews/step_0000001.gif") as gif:
        assert gif.n_frames == 8
        assert gif.size == (3 * 34 + 2, 2 * 34 + 2)


def test_mae_st_recipe_on_real_videos_with_repeated_sampling(tmp_path):
    """VideoFolder under the Trainer: PyAV decoding, 2 clips per video, lr scaled by clips."""
    from test_video_data import write_video

    videos = tmp_path / "videos"
    for name in ("a", "b"):
        (videos / name).mkdir(parents=True)
        for i in range(2):
            write_video(videos / name / f"{i}.mp4", num_frames=12)
    (videos / "b" / "broken.mp4").write_bytes(b"not a video")
    args = [
        "pretrain",
        "fit",
        "--config",
        str(ROOT / "recipes/pretrain/mae_st_vit_large_k400.yaml"),
        "--data.root",
        str(videos),
        "--data.img_size",
        "32",
        "--data.num_frames",
        "4",
        "--data.sampling_rate",
        "2",
        "--data.batch_size",
        "2",
        "--data.repeat_aug",
        "2",
        "--data.num_workers",
        "0",
        "--model.encoder.init_args.num_frames",
        "4",
        "--model.encoder.init_args.patch_size",
        "8",
        "--model.encoder.init_args.model_kwargs",
        '{"depth": 1, "embed_dim": 64, "num_heads": 2}',
        "--model.decoder_dim",
        "32",
        "--model.decoder_depth",
        "1",
        "--model.decoder_heads",
        "2",
        "--model.pred_frames",
        "2",
        *CPU_TRAINER,
        "--trainer.max_steps",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    # effective batch = 2 videos (their 2 clips each are not counted): lr = 1.6e-3 x 2 / 256
    base_lr = ckpt["lr_schedulers"][0]["base_lrs"][0]
    assert abs(base_lr - 1.6e-3 * 2 / 256) < 1e-12


def test_a_frame_count_mismatch_is_one_clear_error(tmp_path, capsys):
    args = [
        "pretrain", "fit", "--config", str(ROOT / "recipes/quickstart/videomae_moving_digits.yaml"),
        "--data.num_frames", "4", *CPU_TRAINER, "--trainer.max_steps", "1",
        "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "mimkit pretrain: error: the data gives 4-frame clips but the encoder is built for 8" in err
    )
    assert "Traceback" not in err
