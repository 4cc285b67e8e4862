"""Shared pieces of the test suite: tiny encoders and CPU trainer arguments."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import pytest

from mimkit.pretrain import ViTEncoder

#: Trainer overrides that make any recipe run on one CPU process in fp32.
CPU_TRAINER = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.devices",
    "1",
    "--trainer.num_nodes",
    "1",
    "--trainer.precision",
    "32-true",
    "--trainer.enable_progress_bar",
    "false",
]

#: CPU_TRAINER plus one short epoch: two training batches and one validation batch.
FAST_TRAINER = [
    *CPU_TRAINER,
    "--trainer.accumulate_grad_batches",
    "1",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
]


def quiet_trainer(root: Any, **kwargs: Any) -> L.Trainer:
    """A one-device CPU Trainer without logger, checkpoints, progress bar or validation
    (unless ``kwargs`` say otherwise), writing under ``root``."""
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


#: The tiny MAE / VideoMAE of the reference tests (a depth-2 ViT-Tiny encoder, decoder 32 wide,
#: 2 blocks, 4 heads), as keyword arguments shared by transformers' ViTMAEConfig and
#: VideoMAEConfig.
HF_TINY_MAE_SIZES: dict[str, Any] = dict(
    hidden_size=192,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=768,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=128,
    qkv_bias=True,
    norm_pix_loss=True,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny_encoder(depth: int = 1, patch_size: int = 8, **kwargs: Any) -> ViTEncoder:
    """A ViT-Tiny-wide encoder on 32x32 images with ``depth`` blocks."""
    kwargs.setdefault("img_size", 32)
    return ViTEncoder(
        "vit_tiny_patch16_224", patch_size=patch_size, model_kwargs={"depth": depth}, **kwargs
    )


def run_ranks_script(tmp_path: Path, script: str, ranks: int = 2) -> list[Any]:
    """Runs a DDP script in a fresh process and returns what each rank wrote.

    ``script`` is formatted with ``tests`` (this folder, for imports) and ``out`` (a path
    prefix: rank ``r`` writes the ``repr`` of its result to ``out + str(r)``).
    """
    path, out = tmp_path / "ranks_script.py", str(tmp_path / "result_rank")
    path.write_text(textwrap.dedent(script).format(tests=str(Path(__file__).parent), out=out))
    done = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [ast.literal_eval(Path(out + str(r)).read_text()) for r in range(ranks)]


def record_info_nce_gather(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[bool]:
    """Wraps ``module.info_nce`` to record its ``gather`` argument, call by call."""
    gathers: list[bool] = []
    real = module.info_nce

    def recording(*args: Any, **kwargs: Any) -> Any:
        gathers.append(kwargs["gather"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "info_nce", recording)
    return gathers
