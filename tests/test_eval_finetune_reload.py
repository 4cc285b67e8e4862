"""A FineTune(pool="avg") checkpoint reloads as the feature extractor it fine-tuned:
public loader, export to timm, k-NN command and linear probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from tiny import quiet_trainer, tiny_encoder

from mimkit.cli import main
from mimkit.data import Synthetic
from mimkit.finetune import (
    CheckpointError,
    FineTune,
    LinearProbe,
    export_encoder,
    load_encoder,
    pool_tokens,
    pooled_features,
)

DATA = {"img_size": 32, "num_samples": 8, "num_val_samples": 4, "num_classes": 3, "batch_size": 4}


def finetuned_features(model: FineTune, pixels: torch.Tensor) -> torch.Tensor:
    """``(B, D)``: what the fine-tuned head reads, ``fc_norm(mean of patch tokens)``."""
    tokens = model.encoder(pixels)
    return model.fc_norm(pool_tokens(tokens, "avg", model.encoder.num_prefix_tokens))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, FineTune]:
    root = tmp_path_factory.mktemp("finetuned")
    torch.manual_seed(0)
    model = FineTune(encoder=tiny_encoder(depth=1), pool="avg", mixup_alpha=0.0, cutmix_alpha=0.0)
    with torch.no_grad():  # a non-trivial fc_norm: loading it (or not) shows
        model.fc_norm.weight.uniform_(0.5, 2.0)
        model.fc_norm.bias.normal_()
    trainer = quiet_trainer(root, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, Synthetic(**DATA))
    path = root / "finetuned.ckpt"
    trainer.save_checkpoint(path)
    return path, model.eval()


def test_loader_rebuilds_the_finetuned_feature_extractor(finetuned):
    path, model = finetuned
    encoder, report = load_encoder(path)  # strict
    assert report.missing == [] and report.unexpected == []
    assert "fc_norm.weight" not in report.ignored and "head.weight" in report.ignored
    assert isinstance(encoder.norm, torch.nn.Identity)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = pooled_features(encoder.eval()(pixels), "avg", encoder)
        torch.testing.assert_close(feats, finetuned_features(model, pixels))
        torch.testing.assert_close(model.head(feats), model(pixels))


def test_export_loads_into_timm_with_the_finetuned_features(finetuned, tmp_path):
    path, model = finetuned
    out, sidecar = export_encoder(path, tmp_path / "ft.safetensors")
    meta = json.loads(sidecar.read_text())
    assert meta["timm_kwargs"]["global_pool"] == "avg" and meta["timm_kwargs"]["fc_norm"]
    vit = timm.create_model(meta["timm_name"], num_classes=0, **meta["timm_kwargs"]).eval()
    vit.load_state_dict(load_file(str(out)), strict=True)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit(pixels), finetuned_features(model, pixels))
    again, _ = load_encoder(out)  # the export reloads too
    assert not isinstance(again.fc_norm, torch.nn.Identity)


def test_knn_command_and_probe_run_on_the_finetuned_checkpoint(finetuned, tmp_path):
    path, model = finetuned
    data = json.dumps({"class_path": "mimkit.data.Synthetic", "init_args": DATA})
    out = tmp_path / "knn.json"
    args = ["knn", "--init_from", str(path), "--data", data, "--pool", "avg", "--k", "3"]
    assert main([*args, "--output", str(out)]) == 0
    assert json.loads(out.read_text())["val"] == 4
    probe = LinearProbe(init_from=str(path), num_classes=3, pool="avg").eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(probe.features(pixels), finetuned_features(model, pixels))


def test_metadata_of_older_finetune_checkpoints_is_upgraded(finetuned, tmp_path):
    path, model = finetuned
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["mimkit"]["encoder"] = dict(model.encoder.config)  # what FineTune used to record
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    encoder, report = load_encoder(old)
    assert report.missing == [] and isinstance(encoder.norm, torch.nn.Identity)


def test_an_encoder_with_a_final_norm_gets_a_clear_error(finetuned):
    path, _ = finetuned
    with pytest.raises(CheckpointError, match="normalizes after pooling"):
        load_encoder(path, tiny_encoder(depth=1))
