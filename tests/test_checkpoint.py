"""The checkpoint loader: every layout, exact key reports, resampling, safety, clear errors."""

import argparse
import pickle

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from mimkit.finetune import (
    CheckpointError,
    CheckpointNotFoundError,
    build_encoder,
    load_encoder,
    load_encoder_state,
    read_checkpoint,
)
from mimkit.pretrain import ViTEncoder


def tiny(img_size=32, name="vit_tiny_patch16_224", seed=0, **kw):
    torch.manual_seed(seed)
    return ViTEncoder(name, img_size=img_size, patch_size=8, model_kwargs={"depth": 2}, **kw)


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_official_mae_layout(tmp_path):
    source = tiny(seed=1)
    state = dict(source.state_dict())
    decoder = {
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.randn(32, 192),
        "decoder_pos_embed": torch.zeros(1, 17, 32),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(96, 32),
        "decoder_norm.weight": torch.ones(32),
        "decoder_pred.weight": torch.randn(192, 32),
    }
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    # as main_pretrain.py's misc.save_model writes it: the options ride along as a Namespace
    options = argparse.Namespace(model="mae_vit_tiny", mask_ratio=0.75, input_size=32)
    torch.save({"model": {**state, **decoder}, "epoch": 799, "args": options}, path)
    target = tiny(seed=2)
    report = load_encoder_state(target, path)
    assert report.format == "mae-pth"
    assert report.missing == [] and report.unexpected == []
    assert report.ignored == sorted(decoder)
    assert_same(target.state_dict(), source.state_dict())


def test_videomae_wrapper_prefix_and_split_qkv_bias(tmp_path):
    source = tiny(seed=3)
    state = dict(source.state_dict())
    wrapped = {}
    for key, value in state.items():
        if key.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            stem = key[: -len("qkv.bias")]
            wrapped[f"encoder.{stem}q_bias"] = q
            wrapped[f"encoder.{stem}v_bias"] = v
            state[key] = torch.cat([q, torch.zeros_like(q), v])  # VideoMAE has no key bias
        else:
            wrapped[f"encoder.{key}"] = value
    wrapped["decoder.head.weight"] = torch.randn(4, 4)
    wrapped["encoder_to_decoder.weight"] = torch.randn(4, 4)
    path = tmp_path / "videomae.pth"
    torch.save({"module": wrapped}, path)
    target = tiny(seed=4)
    report = load_encoder_state(target, path)
    assert report.format == "wrapped"
    assert report.ignored == ["decoder.head.weight", "encoder_to_decoder.weight"]
    assert_same(target.state_dict(), state)


def test_plain_timm_state_dict_with_head_and_ddp_prefix(tmp_path):
    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=7, img_size=32, patch_size=8, depth=2
    )
    path = tmp_path / "timm.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    target = tiny()
    report = load_encoder_state(target, path)
    assert report.ignored == ["head.bias", "head.weight"]
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert_same(target.state_dict(), expected)


def test_pos_embed_resampled_to_new_grid(tmp_path):
    source = tiny(img_size=32, sincos_pos_embed=False, seed=5)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    target = tiny(img_size=48, sincos_pos_embed=False)
    report = load_encoder_state(target, path)
    assert report.resampled == ["pos_embed"]
    expected = resample_abs_pos_embed(source.pos_embed, new_size=[6, 6], num_prefix_tokens=1)
    assert target.pos_embed.shape == (1, 37, 192)
    torch.testing.assert_close(target.pos_embed, expected)
    torch.testing.assert_close(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_other_architecture_is_one_clear_error(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(tiny(name="vit_small_patch16_224").state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_encoder_state(tiny(), path)
    message = str(err.value)
    assert "different architecture" in message
    assert "embed_dim 384" in message and "embed_dim 192" in message
    assert "\n" not in message


def test_missing_and_unexpected_keys_reported_exactly(tmp_path):
    state = dict(tiny().state_dict())
    del state["norm.weight"], state["norm.bias"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing 2: \['norm.bias', 'norm.weight'\]"):
        load_encoder_state(tiny(), path)
    report = load_encoder_state(tiny(), path, strict=False)
    assert report.missing == ["norm.bias", "norm.weight"]
    assert report.unexpected == ["extra.weight"]
    # missing transformer blocks fail even when not strict
    del state["blocks.1.attn.qkv.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="blocks.1.attn.qkv.weight"):
        load_encoder_state(tiny(), path, strict=False)


class Payload:
    """Unpickling this runs ``open(marker, "w")``: arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refuses_pickled_code_without_running_it(tmp_path):
    # the payload is real: a plain unpickler runs it
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof)))
    assert proof.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "extra": Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load .*never unpickles"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_encoder(path, tiny())
    assert not marker.exists()


def test_missing_file_and_undescribed_checkpoint(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as err:
        load_encoder(tmp_path / "nope.ckpt")
    assert isinstance(err.value, FileNotFoundError)
    path = tmp_path / "plain.pth"
    torch.save(tiny().state_dict(), path)
    with pytest.raises(CheckpointError, match="does not describe its encoder"):
        load_encoder(path)


def test_mimkit_layout_rebuilds_encoder(tmp_path):
    source = tiny(seed=6)
    ckpt = {
        "state_dict": {
            **{f"encoder.{k}": v for k, v in source.state_dict().items()},
            "decoder.pred.weight": torch.zeros(2, 2),
        },
        "mimkit": {"method": "MAE", "encoder": source.config, "mean": [0.5] * 3, "std": [0.2] * 3},
        "epoch": 3,
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    encoder, report = load_encoder(path)
    assert report.format == "mimkit-ckpt" and report.ignored == ["decoder.pred.weight"]
    assert encoder.config == source.config
    assert_same(encoder.state_dict(), source.state_dict())
    bigger, report = load_encoder(path, img_size=64)
    assert bigger.grid_size == (8, 8) and report.resampled == ["pos_embed"]
    assert build_encoder(read_checkpoint(path).meta).embed_dim == 192
