"""Video evaluation: loading video / image / official checkpoints into video encoders,
multi-clip x multi-crop testing, and fine-tune, probe and k-NN on a VideoMAE checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_video_data import frame_index, write_video
from test_video_model import hf_videomae_layers
from test_video_weights import TINY, official_videomae_layout
from tiny import FAST_TRAINER, HF_TINY_MAE_SIZES
from torchvision.transforms.v2 import functional as TF

from mimkit.cli import main
from mimkit.data.video import VideoFolder
from mimkit.data.video_decode import clip_indices, eval_clip_positions
from mimkit.data.video_transform import VideoClipTransform
from mimkit.finetune import CheckpointError, ConfigError, FineTune, LinearProbe, load_encoder
from mimkit.pretrain import ViTEncoder
from mimkit.pretrain.video_weights import resample_tubelet, resample_video_pos_embed

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def video_encoder(**kwargs) -> ViTEncoder:
    return ViTEncoder("vit_tiny_patch16_224", **{**TINY, **kwargs}).eval()


# ----- loading --------------------------------------------------------------------------


def test_another_frame_count_and_tubelet_are_resampled(tmp_path):
    source = video_encoder(num_frames=4, tubelet_size=2, sincos_pos_embed=False)
    path = tmp_path / "video.pth"
    torch.save(source.state_dict(), path)  # a plain timm-keyed state dict: no metadata

    longer = video_encoder(num_frames=8, tubelet_size=2, sincos_pos_embed=False)
    _, report = load_encoder(path, longer)
    assert report.resampled == ["pos_embed"] and report.missing == report.unexpected == []
    expected = resample_video_pos_embed(source.pos_embed.detach(), (2, 4, 4), (4, 4, 4), 1)
    torch.testing.assert_close(longer.pos_embed.detach(), expected)
    torch.testing.assert_close(longer.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)

    thinner = video_encoder(num_frames=4, tubelet_size=1, sincos_pos_embed=False)
    _, report = load_encoder(path, thinner)
    assert sorted(report.resampled) == ["patch_embed.proj.weight", "pos_embed"]
    weight = resample_tubelet(source.patch_embed.proj.weight.detach(), 1, 8)
    torch.testing.assert_close(thinner.patch_embed.proj.weight.detach(), weight)


@pytest.mark.parametrize("layout", ["videomae", "joint"])
def test_a_fixed_sincos_table_is_rebuilt_for_another_frame_count(tmp_path, layout):
    """VideoMAE rebuilds its fixed table for the new grid; its flat layout does not
    survive interpolation. A trained table (perturbed here) is still interpolated."""
    source = video_encoder(num_frames=8, tubelet_size=2, video_pos_embed=layout)
    path = tmp_path / "video.pth"
    torch.save(source.state_dict(), path)
    shorter = video_encoder(num_frames=4, tubelet_size=2, video_pos_embed=layout)
    own = shorter.pos_embed.detach().clone()
    _, report = load_encoder(path, shorter)
    assert report.fixed == ["pos_embed"] and report.resampled == []
    torch.testing.assert_close(shorter.pos_embed.detach(), own)
    if layout == "videomae":  # 4 of 8 frames: the first half of the source's flat table
        torch.testing.assert_close(own[:, 1:], source.pos_embed.detach()[:, 1 : own.shape[1]])

    trained = source.pos_embed.detach() + 0.01 * torch.randn_like(source.pos_embed)
    torch.save({**source.state_dict(), "pos_embed": trained}, path)
    shorter = video_encoder(num_frames=4, tubelet_size=2, video_pos_embed=layout)
    _, report = load_encoder(path, shorter)
    assert report.resampled == ["pos_embed"]
    expected = resample_video_pos_embed(trained, (4, 4, 4), (2, 4, 4), 1)
    torch.testing.assert_close(shorter.pos_embed.detach(), expected)


def test_official_videomae_layout_without_pos_embed_gives_the_same_features(tmp_path):
    ours, official, kwargs = official_videomae_layout()
    ours.eval()
    official["decoder.head.weight"] = torch.zeros(3, 3)
    official["encoder_to_decoder.weight"] = torch.zeros(3, 192)
    path = tmp_path / "checkpoint-1599.pth"
    torch.save({"model": official, "epoch": 1599}, path)

    fresh = ViTEncoder(
        "vit_tiny_patch16_224", num_frames=4, video_pos_embed="videomae", init="timm", **kwargs
    ).eval()
    _, report = load_encoder(path, fresh)
    assert report.fixed == ["pos_embed"] and report.missing == report.unexpected == []
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(clip), ours(clip))


def test_image_checkpoint_inflates_into_a_video_encoder(tmp_path):
    image = ViTEncoder("vit_tiny_patch16_224", **TINY).eval()
    path = tmp_path / "image.pth"
    torch.save(image.state_dict(), path)
    video = video_encoder(num_frames=4, tubelet_size=2)
    _, report = load_encoder(path, video)
    assert "patch_embed.proj.weight" in report.resampled
    frame = torch.randn(2, 3, 32, 32)
    clip = frame.unsqueeze(2).expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        tokens = video.embed_tubelets(clip).view(2, 2, 16, -1)
        expected = image.patch_embed(frame)
    torch.testing.assert_close(tokens[:, 1], expected, atol=1e-5, rtol=1e-5)


def test_a_video_checkpoint_for_an_image_encoder_is_one_clear_error(tmp_path):
    path = tmp_path / "video.pth"
    torch.save(video_encoder(num_frames=4).state_dict(), path)
    with pytest.raises(CheckpointError, match="holds a video encoder"):
        load_encoder(path, ViTEncoder("vit_tiny_patch16_224", **TINY))


# ----- multi-view testing ---------------------------------------------------------------


def test_multi_view_logits_are_the_mean_softmax_of_the_views():
    model = FineTune(encoder=video_encoder(num_frames=4), num_classes=5, pool="avg").eval()
    views = torch.randn(3, 6, 3, 4, 32, 32)  # 3 videos x 6 views
    with torch.no_grad():
        merged = model.predict(views)
        per_view = torch.stack([model(views[:, v]) for v in range(6)], dim=1)
    expected = per_view.softmax(-1).mean(1)
    torch.testing.assert_close(merged.exp(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(merged.exp().sum(-1), torch.ones(3))


def test_multi_view_log_probabilities_stay_finite_when_a_class_underflows():
    model = FineTune(encoder=video_encoder(num_frames=4), num_classes=3, pool="avg")
    gap = torch.tensor([[200.0, 0.0, -200.0], [0.0, 200.0, -200.0]])  # class 2: e^-400
    views = torch.zeros(1, 2, 3, 4, 32, 32)  # (B, V, ...): only the shape is read here
    merged = model.predict(views, logits_fn=lambda _: gap)
    assert torch.isfinite(merged).all()
    torch.testing.assert_close(merged[0, 2], torch.tensor(-400.0))  # log(e^-400) exactly
    reference = gap.softmax(-1).mean(0).log()  # the plain formula, finite for classes 0, 1
    torch.testing.assert_close(merged[0, :2], reference[:2])
    loss = F.cross_entropy(merged, torch.tensor([2]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(400.0)


def test_video_finetune_model_matches_transformers_videomae_classifier():
    """VideoMAE's fine-tuning model: mean of the tokens without a final norm, ``fc_norm``,
    head; against transformers' ``VideoMAEForVideoClassification`` with copied weights."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    encoder = video_encoder(
        num_frames=4,
        tubelet_size=2,
        video_pos_embed="videomae",
        model_kwargs={"depth": 2, "class_token": False, "global_pool": "avg"},
    )
    model = FineTune(encoder=encoder, num_classes=5, pool="avg", mixup_alpha=0, cutmix_alpha=0)
    model.build_head(5)
    with torch.no_grad():  # non-trivial norm and head weights
        for param in [*model.fc_norm.parameters(), *model.head.parameters()]:
            param.normal_(std=0.2)
    model.eval()
    config = transformers.VideoMAEConfig(  # the decoder sizes go unused by the classifier
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, num_labels=5,
        use_mean_pooling=True, **HF_TINY_MAE_SIZES,
    )  # fmt: skip
    hf = transformers.VideoMAEForVideoClassification(config).eval()
    ours = model.state_dict()
    state = {
        "videomae.embeddings.patch_embeddings.projection.weight": ours[
            "encoder.patch_embed.proj.weight"
        ],
        "videomae.embeddings.patch_embeddings.projection.bias": ours[
            "encoder.patch_embed.proj.bias"
        ],
        "fc_norm.weight": ours["fc_norm.weight"],
        "fc_norm.bias": ours["fc_norm.bias"],
        "classifier.weight": ours["head.weight"],
        "classifier.bias": ours["head.bias"],
    }
    state |= hf_videomae_layers(ours, "videomae.encoder.layer", "encoder.blocks", 2)
    if set(state) != set(hf.state_dict()):
        pytest.skip("this transformers version names VideoMAE's layers differently")
    hf.load_state_dict(state, strict=True)
    clips = torch.randn(3, 3, 4, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=clips.transpose(1, 2)).logits
        torch.testing.assert_close(model(clips), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("module", [FineTune, LinearProbe])
def test_class_token_pooling_without_a_class_token_is_a_config_error(module):
    encoder = video_encoder(
        num_frames=4, model_kwargs={"depth": 1, "class_token": False, "global_pool": "avg"}
    )
    with pytest.raises(ConfigError, match="class token"):
        module(encoder=encoder, num_classes=5, pool="cls")


def test_video_finetune_recipes_keep_the_sincos_table_fixed():
    recipes = sorted(RECIPES.glob("finetune/videomae_*.yaml"))
    assert recipes and all(
        yaml.safe_load(r.read_text())["model"]["train_pos_embed"] is False for r in recipes
    )
    model = FineTune(encoder=video_encoder(num_frames=4), num_classes=3, train_pos_embed=False)
    assert not model.encoder.pos_embed.requires_grad
    grouped = {id(p) for group in model.param_groups() for p in group["params"]}
    assert id(model.encoder.pos_embed) not in grouped


def test_eval_crops_span_the_long_side():
    frames = torch.arange(4 * 48 * 64 * 3).remainder(251).to(torch.uint8).view(4, 48, 64, 3)
    transform = VideoClipTransform(32, train=False, mean=(0.0,) * 3, std=(1.0,) * 3)
    left, center, right = transform.eval_crops(frames, 3)
    resized = TF.resize(frames.permute(0, 3, 1, 2), 32, antialias=True).float() / 255  # uint8
    room = resized.shape[-1] - 32
    assert resized.shape[-2] == 32 and room > 8
    for view, start in ((left, 0), (center, round(room / 2)), (right, room)):
        expected = resized[..., start : start + 32].permute(1, 0, 2, 3)
        torch.testing.assert_close(view, expected)
    torch.testing.assert_close(transform(frames), center)  # one view: the center crop


def test_video_folder_test_split_returns_clips_spread_over_the_video(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_video(tmp_path / name / "0.mp4", num_frames=20)
    data = VideoFolder(
        tmp_path, val_root=tmp_path, img_size=32, num_frames=4, sampling_rate=2,
        mean=(0.0,) * 3, std=(1.0,) * 3, test_clips=3, test_crops=2, batch_size=2, num_workers=0,
    )  # fmt: skip
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    assert batch["pixels"].shape == (2, 6, 3, 4, 32, 32) and batch["label"].tolist() == [0, 1]
    clips = (batch["pixels"][0, ::2].permute(0, 2, 3, 4, 1) * 255).round().to(torch.uint8)
    starts = [frame_index(clip)[0] for clip in clips]
    expected = [clip_indices(20, 4, 2, "random", False, position=p)[0] for p in (0, 0.5, 1)]
    assert starts == expected == [0, 6, 13]
    assert eval_clip_positions(2, "uniform") == [0.0, 0.5]  # VideoMAE ssv2.py test offsets
    tick = 20 / 4  # VideoMAE: frames int(tick * x) and int(tick / 2 + tick * x)
    for position, shift in zip(eval_clip_positions(2, "uniform"), (0.0, tick / 2), strict=True):
        frames = clip_indices(20, 4, 2, "uniform", False, position=position)
        assert frames == [int(shift + tick * x) for x in range(4)]
    assert data.val_dataset is None  # a test with its own source reads no validation one
    data.setup("validate")
    val = next(iter(data.val_dataloader()))  # validation stays single-view
    assert val["pixels"].shape == (2, 3, 4, 32, 32)


def test_the_test_stage_needs_only_the_test_source(tmp_path):
    (tmp_path / "a").mkdir()
    write_video(tmp_path / "a" / "0.mp4", num_frames=12)
    data = VideoFolder(
        tmp_path / "train.csv", val_root=tmp_path / "val.csv", test_root=tmp_path,
        img_size=32, num_frames=4, batch_size=1, num_workers=0,
    )  # fmt: skip
    data.preflight("test")
    data.setup("test")
    assert next(iter(data.test_dataloader()))["pixels"].shape[0] == 1
    with pytest.raises(FileNotFoundError, match="val.csv"):
        data.preflight("validate")


# ----- end to end on a VideoMAE checkpoint ----------------------------------------------


@pytest.fixture(scope="module")
def videomae_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videomae")
    args = [
        "pretrain", "fit", "--config", str(RECIPES / "quickstart/videomae_moving_digits.yaml"),
        "--model.encoder.init_args.model_kwargs",
        '{"depth": 2, "class_token": false, "global_pool": "avg"}',
        "--data.batch_size", "8", "--data.num_samples", "64", "--data.num_val_samples", "64",
        "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
        "--preview.every_n_steps", "0",
    ]  # fmt: skip
    assert main(args) == 0
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for name in ("a", "b", "c"):
        (root / name).mkdir()
        for i in range(2):
            write_video(root / name / f"{i}.mp4", num_frames=12, height=32, width=40)
    return root


def video_recipe_args(recipe: Path, ckpt: Path, videos: Path, root: Path) -> list[str]:
    command = "finetune" if recipe.parent.name == "finetune" else "probe"
    args = [command, "fit", "--config", str(recipe), "--model.init_from", str(ckpt)]
    if "k400" in recipe.name or "ssv2" in recipe.name:
        data = {
            "root": str(videos), "val_root": str(videos), "test_root": str(videos),
            "num_classes": 3, "img_size": 32, "num_frames": 4, "sampling_rate": 2,
            "batch_size": 2, "num_workers": 0,
        }  # fmt: skip
        args += ["--data.init_args", json.dumps(data)]
        args += [
            "--model.encoder.init_args.name", "vit_tiny_patch16_224",
            "--model.encoder.init_args.img_size", "32",
            "--model.encoder.init_args.patch_size", "4",
            "--model.encoder.init_args.num_frames", "4",
            "--model.encoder.init_args.model_kwargs",
            '{"depth": 2, "class_token": false, "global_pool": "avg"}',
        ]  # fmt: skip
    return [*args, *FAST_TRAINER, "--trainer.default_root_dir", str(root)]


@pytest.mark.parametrize(
    "recipe",
    sorted(RECIPES.glob("finetune/videomae_*.yaml"))
    + sorted(RECIPES.glob("probe/*videomae*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_video_recipe_runs_two_steps(recipe, videomae_ckpt, videos, tmp_path):
    assert main(video_recipe_args(recipe, videomae_ckpt, videos, tmp_path)) == 0
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_finetune_from_fewer_frames_then_multi_view_test(videomae_ckpt, videos, tmp_path):
    """8-frame checkpoint -> 4-frame encoder; repeated clips + mixup; 2 clips x 3 crops test."""
    recipe = RECIPES / "finetune/videomae_vit_base_k400.yaml"
    args = video_recipe_args(recipe, videomae_ckpt, videos, tmp_path)
    args += ["--data.repeat_aug", "2", "--data.test_clips", "2", "--data.test_crops", "3"]
    args += ["--model.ema_decay", "0.9"]
    assert main(args) == 0
    best = tmp_path / "checkpoints" / "best.ckpt"
    state = torch.load(best, map_location="cpu", weights_only=True)
    assert state["state_dict"]["encoder.pos_embed"].shape == (1, 2 * 8 * 8, 192)
    assert state["mimkit"]["encoder"]["num_frames"] == 4
    results = tmp_path / "test"
    test_args = ["finetune", "test", *args[2:], "--ckpt_path", str(best)]
    test_args[test_args.index("--trainer.default_root_dir") + 1] = str(results)
    assert main(test_args) == 0


def test_knn_and_cached_probe_on_video_features(videomae_ckpt, tmp_path, capsys):
    data = {
        "class_path": "mimkit.data.moving_digits.MovingDigits",
        "init_args": {"num_samples": 256, "num_val_samples": 128, "batch_size": 64},
    }
    out = tmp_path / "knn.json"
    args = ["knn", "--init_from", str(videomae_ckpt), "--data", json.dumps(data)]
    assert main([*args, "--pool", "avg", "--k", "10", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["val"] == 128 and result["train"] == 256
    assert result["top1"] > 20.0  # 10 digit classes: chance is 10%
    capsys.readouterr()
    assert main([*args, "--pool", "cls"]) == 2
    assert "class token" in capsys.readouterr().err


def test_video_export_reloads_through_mimkit_and_says_timm_cannot(videomae_ckpt, tmp_path, capsys):
    out = tmp_path / "video_encoder.safetensors"
    assert main(["export", str(videomae_ckpt), str(out)]) == 0
    assert "has no timm counterpart" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["timm_loadable"] is False
    assert (meta["encoder"]["num_frames"], meta["encoder"]["tubelet_size"]) == (8, 2)
    exported, report = load_encoder(out)
    original, _ = load_encoder(videomae_ckpt)
    assert report.format == "safetensors" and exported.is_video
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(clip), original.eval()(clip))


def test_quickstart_report_on_a_video_checkpoint(videomae_ckpt, capsys):
    from mimkit.finetune.quickstart_report import main as report_main
    from mimkit.finetune.quickstart_report import report

    rows = report(str(videomae_ckpt), probe_epochs=2, video_clips=128, label="direction")
    assert [(r["encoder"], r["pool"]) for r in rows] == [
        ("VideoMAE pretrained", "avg"),
        ("random init", "avg"),
    ]  # no class token: mean-pooled features only
    assert all(r["classes"] == 8 and r["val"] == 512 and r["data"] == "moving digits" for r in rows)
    assert all(0.0 <= r["knn_top1"] <= 100.0 and 0.0 <= r["probe_top1"] <= 100.0 for r in rows)
    assert report_main(["--ckpt", str(videomae_ckpt), "--probe_epochs", "1"]) == 0
    assert "moving digits (512 clips, 10 classes, chance 10.0%)" in capsys.readouterr().out
