import pytest
import torch
from torch import nn

from mimkit.plan import (
    MemoryModel,
    choose_batch,
    main,
    memory_model,
    parse_bytes,
    saved_activation_bytes,
)
from mimkit.pretrain import MAE, RandomMasking, ViTEncoder


def test_saved_activation_bytes_counts_what_backward_needs():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 1))
    x = torch.randn(7, 10)
    counted = saved_activation_bytes(lambda: mlp(x).pow(2).sum(), exclude=list(mlp.parameters()))
    # input of the first linear, the ReLU output (also the second linear's input), the
    # output squared by pow: 7 x (10 + 20 + 1) float32 values
    assert counted == 4 * 7 * (10 + 20 + 1)


def test_choose_batch_divides_the_effective_batch():
    model = MemoryModel(static=10 * 2**30, per_sample=2**30, flops_per_sample=1.0)
    assert choose_batch(model, 4096, 8, 80 * 2**30) == (32, 16)  # 62 fit; 32 divides 512
    assert choose_batch(model, 64, 8, 80 * 2**30) == (8, 1)
    assert choose_batch(MemoryModel(90 * 2**30, 1, 1.0), 64, 8, 80 * 2**30) is None
    assert parse_bytes("80GB") == 80 * 2**30 and parse_bytes("512MiB") == 512 * 2**20


def test_memory_model_of_mae_and_checkpointing_saves_memory():
    encoder = ViTEncoder(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, model_kwargs={"depth": 4}
    )
    model = MAE(encoder, RandomMasking(0.75), decoder_dim=64, decoder_depth=1, decoder_heads=4)

    def batch(n):
        return {"pixels": torch.randn(n, 3, 32, 32)}

    plain = memory_model(model, batch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert plain.static == 16 * trainable + 4 * frozen
    # at least each encoder block keeps its (17 x 192) fp32 input for the backward pass
    assert plain.per_sample > 4 * 4 * 17 * 192
    encoder.grad_checkpointing = True
    checkpointed = memory_model(model, batch)
    assert checkpointed.per_sample < 0.6 * plain.per_sample
    assert plain.flops_per_sample > 0


def test_plan_command_on_the_quickstart_recipe(capsys):
    assert (
        main(
            ["--config", "recipes/quickstart/mae_digits.yaml", "--gpus", "2", "--gpu-memory", "1GB"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "per-GPU batch: 32" in out and "accumulation: 1" in out  # 64 = 2 GPUs x 32
    assert "expected optimizer-step time" in out
    with pytest.raises(SystemExit) as exit_info:  # an unreadable size is a usage error
        main(
            ["--config", "recipes/quickstart/mae_digits.yaml", "--gpus", "2", "--gpu-memory", "1XB"]
        )
    assert exit_info.value.code == 2
    assert "--gpu-memory: cannot read '1XB'" in capsys.readouterr().err


def test_plan_step_time_scales_with_the_assumed_mfu(capsys):
    args = ["--config", "recipes/quickstart/mae_digits.yaml", "--gpus", "2", "--gpu-memory", "1GB"]

    def step_time(*extra: str) -> tuple[float, str]:
        assert main([*args, *extra]) == 0
        line = next(
            x for x in capsys.readouterr().out.splitlines() if x.startswith("expected optimizer")
        )
        return float(line.split(": ")[1].split(" s ")[0]), line

    default, line = step_time()
    assert "at 30% MFU" in line  # the default: what MAE reached on an H100 (performance.md)
    halved, _ = step_time("--mfu", "0.15")
    assert default > 0 and halved == pytest.approx(2 * default, rel=0.01)


def test_plan_says_what_the_data_would_stop_the_run_for(tmp_path, capsys):
    shards = ["--data", "mimkit.data.Shards", "--data.urls", str(tmp_path / "s-{0..3}.tar")]
    args = ["--config", "recipes/quickstart/mae_digits.yaml", "--gpus", "2", "--gpu-memory", "1GB"]
    assert main([*args, *shards, "--data.img_size", "32"]) == 0
    out = capsys.readouterr().out
    assert "warning: on 2 GPUs the run would stop: Shards on 2 ranks needs data.epoch_length" in out
    assert main([*args, *shards, "--data.img_size", "32", "--data.epoch_length", "64"]) == 0
    out = capsys.readouterr().out
    assert "note: not found on this machine" in out and "s-0.tar and 3 more" in out


def test_plan_counts_per_loaded_video_with_its_repeated_clips():
    from types import SimpleNamespace

    from mimkit.plan import _make_batch_fn

    videos = SimpleNamespace(img_size=16, num_frames=4, repeat_aug=3, batch_size=2)
    batch = _make_batch_fn(videos)(2)
    assert batch["pixels"].shape == (6, 3, 4, 16, 16) and batch["label"].shape == (6,)
    images = SimpleNamespace(img_size=16, repeat_aug=3)  # repeats apply to clips only
    assert _make_batch_fn(images)(2)["pixels"].shape == (2, 3, 16, 16)
