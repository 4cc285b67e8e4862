"""What only a CUDA GPU can check: nvJPEG decoding and the GPU recipes as written (bf16,
compile, DDP with a static graph; per-block FSDP). Marked ``gpu`` and skipped without one, like
the CUDA cases of other files (the fused CUDA AdamW's NaN skip in ``test_base.py``);
``benchmarks/gpu_checklist.sh tests`` runs them all on a bare CUDA machine."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_device_decode import write_images

from mimkit.data.device_decode import DeviceDecodeCrop, EncodedImageDataset, collate_encoded
from mimkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mimkit.finetune import load_encoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[1]


def test_nvjpeg_decoding_matches_the_cpu_decoder(tmp_path):
    samples = write_images(tmp_path, 4)
    encoded = EncodedImageDataset(samples, scale=(0.2, 1.0))
    items = []
    for index in range(len(samples)):
        torch.manual_seed(index)
        items.append(encoded[index])
    decoder = DeviceDecodeCrop(32, IMAGENET_MEAN, IMAGENET_STD)
    on_cpu = decoder(collate_encoded(copy.deepcopy(items)), "cpu")["pixels"]  # collating
    on_gpu = decoder(collate_encoded(items), "cuda")["pixels"]  # takes the bytes out
    assert on_gpu.is_cuda and on_gpu.shape == on_cpu.shape == (4, 3, 32, 32)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    levels = ((on_gpu.cpu() - on_cpu) * std * 255).abs()  # nvJPEG's IDCT vs libjpeg's
    assert levels.mean() < 1.0 and levels.max() < 16


@pytest.mark.parametrize(
    "recipe", ["mae_vit_base_patch16_in1k.yaml", "mae_vit_huge_patch14_in1k_fsdp.yaml"]
)
def test_gpu_recipe_trains_and_saves_an_encoder_that_loads_exactly(recipe, tmp_path):
    """The recipe's own strategy, compile setting and bf16, at tiny sizes, in a fresh process
    (a process group and compiled graphs stay behind in the one that ran them)."""
    args = [
        "pretrain", "fit", "--config", str(ROOT / "recipes/pretrain" / recipe),
        "--data", "mimkit.data.Synthetic", "--data.img_size", "32", "--data.batch_size", "8",
        "--data.num_samples", "64", "--data.num_val_samples", "8", "--data.num_workers", "0",
        "--model.encoder.init_args.patch_size", "8",
        "--model.encoder.init_args.model_kwargs", '{"depth": 2, "embed_dim": 64, "num_heads": 2}',
        "--model.decoder_dim", "32", "--model.decoder_depth", "1", "--model.decoder_heads", "2",
        "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
        "--trainer.precision", "bf16-mixed", "--trainer.accumulate_grad_batches", "1",
        "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "mimkit", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    last = tmp_path / "checkpoints/last.ckpt"
    raw = torch.load(last, map_location="cpu", weights_only=True)
    assert raw["global_step"] == 3
    encoder, report = load_encoder(last)
    assert report.missing == [] and report.unexpected == []
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, raw["state_dict"][f"encoder.{key}"], rtol=0, atol=0)


def test_plan_measures_the_chosen_batch_on_the_gpu(capsys):
    from mimkit.plan import main as plan

    recipe = "recipes/pretrain/mae_vit_base_patch16_in1k.yaml"  # 512 per GPU: 23 GiB
    assert plan(["--config", recipe, "--gpus", "8", "--gpu-memory", "80GB", "--measure"]) == 0
    out = capsys.readouterr().out
    estimate = next(x for x in out.splitlines() if x.startswith("measured peak"))
    assert abs(float(estimate.split("estimate ")[1].rstrip("%)"))) <= 15  # the bound
    assert "measured step time (eager, one GPU)" in out and "MFU)" in out
