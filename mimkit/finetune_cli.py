"""``mimkit finetune``, ``mimkit probe``, ``mimkit knn`` and ``mimkit export``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser

from mimkit.data import ReportSkippedSamples
from mimkit.finetune import FineTune, LinearProbe
from mimkit.finetune.features import Pool
from mimkit.pretrain import ViTEncoder

from .cli import command_argv
from .pretrain_cli import MimkitCLI

__all__ = ["EvalCLI", "run_export", "run_finetune", "run_knn", "run_probe"]

DESCRIPTIONS = {
    "mimkit finetune": "Fine-tune a pretrained encoder with a classification head (MAE's recipe).",
    "mimkit probe": "Train a linear classifier on the frozen features of a pretrained encoder.",
}


class EvalCLI(MimkitCLI):
    """LightningCLI for a :class:`~mimkit.finetune.ClassifierModule` (model class fixed).

    The data module is any LightningDataModule (``class_path``); its ``img_size`` is linked
    to ``model.img_size`` and its ``num_classes`` is read when training starts. The best
    checkpoint by ``val/acc1`` is kept as ``checkpoints/best.ckpt`` (and ``last.ckpt``).
    """

    def __init__(
        self,
        model_class: type[L.LightningModule],
        prog: str,
        root: str,
        args: list[str] | None = None,
        run: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model_class,
            L.LightningDataModule,
            subclass_mode_model=False,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "callbacks": [LearningRateMonitor(logging_interval="step"), ReportSkippedSamples()],
                "default_root_dir": root,
            },
            parser_kwargs={"prog": prog, "description": DESCRIPTIONS.get(prog)},
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best",
            }
        )
        parser.link_arguments("data.init_args.img_size", "model.img_size", apply_on="parse")


def run_finetune(args: Sequence[str]) -> int:
    """``mimkit finetune {fit,validate,test} --config R.yaml --model.init_from CKPT ...``."""

    with command_argv("finetune", args) as cli_args:
        EvalCLI(FineTune, "mimkit finetune", "runs/finetune", args=cli_args)
    return 0


def run_probe(args: Sequence[str]) -> int:
    """``mimkit probe {fit,validate,test} --config R.yaml --model.init_from CKPT ...``."""

    with command_argv("probe", args) as cli_args:
        EvalCLI(LinearProbe, "mimkit probe", "runs/probe", args=cli_args)
    return 0


def knn_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="mimkit knn",
        description="Weighted k-NN (cosine, exp(sim/T) votes) top-1/top-5 of frozen features.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--init_from", type=str, required=True, help="checkpoint to evaluate")
    parser.add_argument(
        "--encoder",
        type=ViTEncoder | None,
        default=None,
        help="explicit encoder, for checkpoints that do not describe theirs",
    )
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    parser.add_argument("--k", type=int, default=20, help="neighbours that vote (DINO: 20)")
    parser.add_argument(
        "--temperature", type=float, default=0.07, help="votes weigh exp(cosine / T)"
    )
    parser.add_argument(
        "--pool", type=Pool, default="cls", help="features: class token or mean of patch tokens"
    )
    parser.add_argument("--device", type=str | None, default=None, help="default: cuda if any")
    parser.add_argument(
        "--batch_size", type=int | None, default=None, help="feature batch (default: the data's)"
    )
    parser.add_argument(
        "--query_batch", type=int, default=1024, help="queries scored at once (memory)"
    )
    parser.add_argument(
        "--train_chunk", type=int, default=65536, help="training features per similarity block"
    )
    parser.add_argument(
        "--half", action=ActionYesNo, nargs="?", default=False, help="keep features in float16"
    )
    parser.add_argument("--output", type=str | None, default=None, help="write results as JSON")
    return parser


def run_knn(args: Sequence[str]) -> int:
    """``mimkit knn --init_from CKPT --data.class_path ... --data.init_args.root ...``."""
    import torch

    from mimkit.finetune import compute_features, knn_evaluate, load_encoder
    from mimkit.finetune.knn import check_vote_settings
    from mimkit.pretrain.errors import ConfigError

    parser = knn_parser()
    cfg = parser.parse_args(list(args))
    try:  # before any feature is computed
        check_vote_settings(cfg.k, cfg.temperature)
    except ValueError as error:
        raise ConfigError(str(error)) from error

    init = parser.instantiate_classes(cfg)
    datamodule = init.data
    overrides = {}
    if init.encoder is None:  # rebuilt for the data's image size (and frame count)
        overrides = {
            "img_size": getattr(datamodule, "img_size", None),
            "num_frames": getattr(datamodule, "num_frames", None),
        }
    encoder, report = load_encoder(cfg.init_from, init.encoder, **overrides)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if cfg.half else torch.float32
    feats = compute_features(encoder, datamodule, cfg.pool, device, cfg.batch_size, dtype)
    num_classes = getattr(datamodule, "num_classes", None)
    if num_classes is None:
        num_classes = int(max(feats.train_labels.max(), feats.val_labels.max())) + 1
    result = knn_evaluate(
        feats, num_classes, cfg.k, cfg.temperature, device, cfg.query_batch, cfg.train_chunk
    )
    result.update(
        k=cfg.k,
        temperature=cfg.temperature,
        pool=cfg.pool,
        train=len(feats.train),
        val=len(feats.val),
        checkpoint=cfg.init_from,
    )
    print(
        f"k-NN (k={cfg.k}, T={cfg.temperature}, {cfg.pool}) on {len(feats.val)} samples: "
        f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%"
    )
    if cfg.output:
        with open(cfg.output, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


def run_export(args: Sequence[str]) -> int:
    """``mimkit export CKPT OUT.safetensors``."""
    import argparse

    from mimkit.finetune import export_encoder

    parser = argparse.ArgumentParser(
        prog="mimkit export",
        description="Write a checkpoint's encoder as timm-named safetensors + a JSON beside it.",
    )
    parser.add_argument("checkpoint", help="mimkit .ckpt (or an earlier export)")
    parser.add_argument("out", help="target .safetensors file; OUT.json is written beside it")
    ns = parser.parse_args(list(args))

    try:
        tensors, sidecar = export_encoder(ns.checkpoint, ns.out)
    except ValueError as err:  # an output format it cannot write (mimkit's main reports the rest)
        print(f"mimkit export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {tensors} and {sidecar}")
    if not json.loads(sidecar.read_text())["timm_loadable"]:
        print(
            "note: a video encoder (tubelet embedding, space-time positions) has no timm "
            "counterpart; load it with mimkit.finetune.load_encoder or --model.init_from"
        )
    return 0
