"""End to end on a checkpoint made by ``mimkit pretrain``: load, export, k-NN, probe, fine-tune.

One tiny MAE (ViT-Tiny width, 2 blocks, 32px digits, patch 8) is pretrained once per session.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from safetensors.torch import load_file
from tiny import FAST_TRAINER, tiny_encoder

from mimkit.cli import main
from mimkit.data import Digits, Synthetic
from mimkit.finetune import (
    ConfigError,
    FineTune,
    LinearProbe,
    cached_probe,
    compute_feature_sets,
    compute_features,
    knn_evaluate,
    load_encoder,
    read_checkpoint,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY_ENCODER = [
    "--model.encoder.init_args.model_kwargs",
    '{"depth": 2}',
    "--model.encoder.init_args.patch_size",
    "8",
]


@pytest.fixture(scope="session")
def mae_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mae")
    rc = main(
        [
            "pretrain",
            "fit",
            "--config",
            str(RECIPES / "quickstart" / "mae_digits.yaml"),
            *TINY_ENCODER,
            "--model.warmup_epochs",
            "0",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "6",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(root),
            "--preview.every_n_steps",
            "0",
        ]
    )
    assert rc == 0
    path = root / "checkpoints" / "last.ckpt"
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def digits_features(mae_ckpt):
    encoder, _ = load_encoder(mae_ckpt)
    return compute_features(encoder, Digits(img_size=32, batch_size=256), pool="cls")


def test_pretrain_checkpoint_loads_exactly(mae_ckpt):
    raw = torch.load(mae_ckpt, map_location="cpu", weights_only=True)
    encoder, report = load_encoder(mae_ckpt)
    assert report.format == "mimkit-ckpt"
    assert report.missing == [] and report.unexpected == [] and report.resampled == []
    assert all(k.startswith("decoder.") for k in report.ignored) and report.ignored
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, raw["state_dict"][f"encoder.{key}"], rtol=0, atol=0)


def test_export_loads_strictly_into_timm_with_same_features(mae_ckpt, tmp_path):
    out = tmp_path / "enc.safetensors"
    assert main(["export", str(mae_ckpt), str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    # both files as readable as any new file (safetensors alone would write 0600)
    assert out.stat().st_mode & 0o777 == out.with_suffix(".json").stat().st_mode & 0o777
    assert meta["timm_name"] == "vit_tiny_patch16_224"
    assert meta["timm_kwargs"] == {"img_size": 32, "in_chans": 3, "patch_size": 8, "depth": 2}
    assert len(meta["mean"]) == len(meta["std"]) == 3 and meta["timm_loadable"] is True
    model = timm.create_model(meta["timm_name"], num_classes=0, **meta["timm_kwargs"]).eval()
    model.load_state_dict(load_file(str(out)), strict=True)
    encoder, _ = load_encoder(mae_ckpt)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(pixels), encoder.eval()(pixels))
    again, report = load_encoder(out)  # the export itself is a loadable checkpoint
    assert report.format == "safetensors" and again.config == encoder.config
    assert main(["export", str(mae_ckpt), str(tmp_path / "enc.pt")]) == 2


def test_knn_and_cached_probe_beat_chance(digits_features):
    feats = digits_features
    assert len(feats.val) == 360 and feats.train.shape[1] == 192
    knn = knn_evaluate(feats, 10, train_chunk=500, query_batch=100)
    assert knn["top1"] > 50.0 and knn["top5"] > knn["top1"]
    probe = cached_probe(feats, 10, epochs=20, base_lr=10.0, warmup_epochs=2)
    assert probe["top1"] > 50.0


def test_knn_command_matches_library(mae_ckpt, tmp_path):
    out = tmp_path / "knn.json"
    data = {"num_samples": 48, "num_val_samples": 16, "img_size": 32, "batch_size": 16}
    args = ["--init_from", str(mae_ckpt), "--data.class_path", "mimkit.data.Synthetic"]
    args += ["--data.init_args", json.dumps(data), "--k", "5", "--pool", "avg"]
    assert main(["knn", *args, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    encoder, _ = load_encoder(mae_ckpt)
    feats = compute_features(encoder, Synthetic(**data), pool="avg")
    expected = knn_evaluate(feats, 10, k=5)
    assert result["top1"] == pytest.approx(expected["top1"])
    assert result["top5"] == pytest.approx(expected["top5"])
    assert result["val"] == 16 and result["train"] == 48
    missing = ["--init_from", str(tmp_path / "missing.ckpt"), *args[2:]]
    assert main(["knn", *missing]) == 2


def test_one_pass_feature_sets_equal_one_pool_at_a_time(mae_ckpt, digits_features):
    encoder, _ = load_encoder(mae_ckpt)
    datamodule = Digits(img_size=32, batch_size=256)
    sets = compute_feature_sets(encoder, datamodule, ["cls", "avg"])
    assert list(sets) == ["cls", "avg"]
    avg = compute_features(encoder, datamodule, pool="avg")
    for pool, expected in (("cls", digits_features), ("avg", avg)):
        torch.testing.assert_close(sets[pool].train, expected.train)
        torch.testing.assert_close(sets[pool].val, expected.val)
        assert torch.equal(sets[pool].val_labels, expected.val_labels)
    assert not torch.allclose(sets["cls"].val, sets["avg"].val)


def test_probe_fit_then_test_keeps_encoder_frozen(mae_ckpt, tmp_path, capsys):
    recipe = str(RECIPES / "probe" / "linear_digits_quickstart.yaml")
    common = ["--config", recipe, "--model.init_from", str(mae_ckpt)]
    root = ["--trainer.default_root_dir", str(tmp_path)]
    assert main(["probe", "fit", *common, *FAST_TRAINER, *root]) == 0
    best = tmp_path / "checkpoints" / "best.ckpt"
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    pretrained = torch.load(mae_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in pretrained.items():
        if key.startswith("encoder."):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert state["head.1.weight"].shape == (10, 192)
    assert "head.0.weight" not in state  # BatchNorm without affine parameters
    assert main(["probe", "test", *common, *root, "--ckpt_path", str(best)]) == 0


def test_finetune_fit_updates_encoder_with_mixup_and_ema(mae_ckpt, tmp_path):
    recipe = str(RECIPES / "finetune" / "digits_quickstart.yaml")
    args = ["finetune", "fit", "--config", recipe, "--model.init_from", str(mae_ckpt)]
    extra = [
        "--model.mixup_alpha",
        "0.8",
        "--model.cutmix_alpha",
        "1.0",
        "--model.ema_decay",
        "0.9",
    ]
    root = ["--trainer.default_root_dir", str(tmp_path)]
    assert main([*args, *extra, *FAST_TRAINER, *root]) == 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    pretrained = torch.load(mae_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    key = "encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(state[key], pretrained[key])
    assert "encoder.norm.weight" not in state and state["fc_norm.weight"].shape == (192,)
    assert state["head.weight"].shape == (10, 192)
    assert "ema.module.head.weight" in state
    assert ckpt["mimkit"]["num_classes"] == 10 and ckpt["mimkit"]["pool"] == "avg"


def _recipe_args(recipe: Path, ckpt: Path, root: Path) -> list[str]:
    command = "finetune" if recipe.parent.name == "finetune" else "probe"
    args = [command, "fit", "--config", str(recipe), "--model.init_from", str(ckpt)]
    if "in1k" in recipe.name:
        data = {
            "class_path": "mimkit.data.Synthetic",
            "init_args": {"img_size": 32, "num_samples": 16, "num_val_samples": 8, "batch_size": 4},
        }
        args += [
            "--model.encoder.init_args.name",
            "vit_tiny_patch16_224",
            "--model.encoder.init_args.img_size",
            "32",
            *TINY_ENCODER,
            "--data",
            json.dumps(data),
        ]
    return [*args, *FAST_TRAINER, "--trainer.default_root_dir", str(root)]


@pytest.mark.parametrize(
    "recipe",
    [
        path
        for folder in ("finetune", "probe")
        for path in sorted((RECIPES / folder).glob("*.yaml"))
        if "videomae" not in path.stem  # on a video checkpoint in test_video_eval.py
    ],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_recipe_runs_two_steps(recipe, mae_ckpt, tmp_path):
    assert main(_recipe_args(recipe, mae_ckpt, tmp_path)) == 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_clear_errors(mae_ckpt, tmp_path, capsys):
    recipe = str(RECIPES / "probe" / "linear_digits_quickstart.yaml")
    base = ["probe", "fit", "--config", recipe, *FAST_TRAINER]
    base += ["--trainer.default_root_dir", str(tmp_path)]

    def error(*extra: str) -> str:
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("mimkit probe: error:") and "\n" not in message
        return message

    assert "does not exist" in error("--model.init_from", str(tmp_path / "nope.ckpt"))
    init = ["--model.init_from", str(mae_ckpt)]
    assert "num_classes=5 but the data has 10 classes" in error(*init, "--model.num_classes", "5")
    small = '{"class_path": "mimkit.pretrain.ViTEncoder", "init_args": {"name": "vit_small_patch16_224", "img_size": 32, "patch_size": 8, "model_kwargs": {"depth": 2}}}'
    message = error(*init, "--model.encoder", small)
    assert "different architecture" in message and "embed_dim 384" in message
    tiny48 = small.replace("vit_small", "vit_tiny").replace('"img_size": 32', '"img_size": 48')
    message = error(*init, "--model.encoder", tiny48)
    assert "built for 48x48 images but the data gives 32x32" in message


def test_modules_direct(mae_ckpt):
    probe = LinearProbe(init_from=str(mae_ckpt), num_classes=10)
    probe.train()
    assert not probe.encoder.training and probe.head.training
    assert not any(p.requires_grad for p in probe.encoder.parameters())
    model = FineTune(init_from=str(mae_ckpt), num_classes=10, drop_path_rate=0.1, pool="cls")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert read_checkpoint(mae_ckpt).meta["method"] == "MAE"


def test_quickstart_report_compares_pretrained_and_random(mae_ckpt):
    from mimkit.finetune.quickstart_report import format_table, report

    rows = report(str(mae_ckpt), pools=("cls",), probe_epochs=20)
    assert [r["encoder"] for r in rows] == ["MAE pretrained", "random init"]
    assert all(r["classes"] == 10 and r["data"] == "digits" for r in rows)
    assert rows[0]["knn_top1"] > 30.0 and rows[0]["probe_top1"] > 30.0  # chance: 10%
    assert "class tok" in format_table(rows)


def test_quickstart_report_table_has_a_row_per_checkpoint(mae_ckpt, capsys):
    from mimkit.finetune.quickstart_report import main as report_main

    capsys.readouterr()
    args = ["--ckpt", str(mae_ckpt), str(mae_ckpt), "--pools", "cls", "--probe_epochs", "1"]
    assert report_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("MAE pretrained") for line in lines) == 2
    assert sum(line.startswith("random init") for line in lines) == 1  # one per architecture


def test_random_encoder_warns_unless_pretrained_weights_are_loaded(mae_ckpt, tmp_path):
    data = Synthetic(img_size=32, num_samples=4, num_val_samples=4, batch_size=4)

    def validate(model: LinearProbe, ckpt_path: Path | None = None) -> list[str]:
        trainer = L.Trainer(
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.validate(model, datamodule=data, ckpt_path=ckpt_path)
        if not (tmp_path / "probe.ckpt").exists():
            trainer.save_checkpoint(tmp_path / "probe.ckpt")  # the random-init probe's
        return [str(w.message) for w in caught if "init_from is not set" in str(w.message)]

    (message,) = validate(LinearProbe(encoder=tiny_encoder(depth=2), num_classes=10))
    assert "RANDOM initialization" in message and "--model.init_from CKPT" in message
    assert validate(LinearProbe(init_from=str(mae_ckpt), num_classes=10)) == []
    restored = LinearProbe(encoder=tiny_encoder(depth=2), num_classes=10)
    assert validate(restored, ckpt_path=tmp_path / "probe.ckpt") == []  # finetune test --ckpt_path


def mae_layer_decay(name: str, param: torch.Tensor, blocks: int, decay: float, wd: float):
    """facebookresearch/mae ``util/lr_decay.py`` rules, written out: (lr scale, weight decay).

    Layer 0 is the tokens, position table and patch embedding, block ``i`` is layer
    ``i + 1``, everything else (final norm, fc_norm, head) is layer ``blocks + 1``; the
    scale is ``decay ** (blocks + 1 - layer)``. 1-D parameters, ``pos_embed`` and
    ``cls_token`` take no weight decay.
    """
    layers = blocks + 1
    local = name.removeprefix("encoder.") if name.startswith("encoder.") else None
    if local in ("cls_token", "pos_embed") or (local or "").startswith("patch_embed"):
        layer = 0
    elif (local or "").startswith("blocks."):
        layer = int(local.split(".")[1]) + 1
    else:
        layer = layers
    no_decay = param.ndim == 1 or local in ("pos_embed", "cls_token")
    return decay ** (layers - layer), 0.0 if no_decay else wd


def test_layer_wise_lr_decay_follows_maes_rules(mae_ckpt):
    model = FineTune(init_from=str(mae_ckpt), num_classes=10, layer_decay=0.6, pool="avg")
    model.build_head(10)
    blocks = len(model.encoder.blocks)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    seen = set()
    for group in model.param_groups():
        for param in group["params"]:
            name = names[id(param)]
            scale, wd = mae_layer_decay(name, param, blocks, 0.6, 0.05)
            assert group.get("lr_scale", 1.0) == pytest.approx(scale), name
            assert group["weight_decay"] == wd, name
            seen.add(name)
    assert seen == set(names.values())
    assert any(n.startswith("head.") for n in seen) and "encoder.pos_embed" in seen


def drop_path_rates(encoder) -> list[float]:
    return [float(getattr(block.drop_path1, "drop_prob", 0.0)) for block in encoder.blocks]


def test_finetune_from_a_checkpoint_defaults_to_maes_drop_path(mae_ckpt):
    blocks = len(FineTune(init_from=str(mae_ckpt), num_classes=10).encoder.blocks)
    model = FineTune(init_from=str(mae_ckpt), num_classes=10)
    # main_finetune.py's 0.1, rising linearly over the blocks as in timm and MAE
    assert drop_path_rates(model.encoder) == pytest.approx(torch.linspace(0, 0.1, blocks).tolist())
    model = FineTune(init_from=str(mae_ckpt), num_classes=10, drop_path_rate=0.0)
    assert drop_path_rates(model.encoder) == [0.0] * blocks
    probe = LinearProbe(init_from=str(mae_ckpt), num_classes=10)  # frozen: no stochastic depth
    assert drop_path_rates(probe.encoder) == [0.0] * blocks


@pytest.mark.parametrize(
    "optimizer, refused",
    [
        (lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.3), True),
        (lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05), False),  # the same value
        (lambda p: torch.optim.AdamW(p, lr=1e-3), False),  # AdamW's own default: unset
    ],
)
def test_an_optimizer_weight_decay_the_groups_override_is_refused(mae_ckpt, optimizer, refused):
    model = FineTune(init_from=str(mae_ckpt), num_classes=10, optimizer=optimizer, scale_lr=False)
    model.trainer = L.Trainer(logger=False, max_epochs=1, max_steps=10, enable_checkpointing=False)
    if refused:
        with pytest.raises(
            ConfigError, match=r"weight_decay=0.3 is not used.*--model.weight_decay"
        ):
            model.configure_optimizers()
    else:
        groups = model.configure_optimizers()["optimizer"].param_groups
        assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
