"""LightningCLI for ``mimkit pretrain``."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mimkit.data import ReportSkippedSamples
from mimkit.pretrain import PretrainModule, ReconstructionPreview
from mimkit.pretrain.errors import ConfigError

from .cli import exception_chain
from .resume import AtomicCheckpointIO, RequeueOnSignal, RestoreRNG

__all__ = ["PretrainCLI", "MimkitCLI"]


def innermost_value_error(error: BaseException) -> BaseException:
    """The first ``ValueError`` raised in ``error``'s chain of causes (the constructor's own)."""
    return [e for e in exception_chain(error) if isinstance(e, ValueError)][-1]


class MimkitCLI(LightningCLI):
    """LightningCLI with mimkit's run-directory conventions.

    Checkpoints go to ``<trainer.default_root_dir>/checkpoints`` (so
    ``--ckpt_path last`` finds the previous run's ``last.ckpt``), the resolved
    config is saved in the logger's run folder, and unknown keys are errors.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The optimizer is the model's (``model.optimizer``, with mimkit's lr scaling, weight
        # decay groups and schedule): no top-level --optimizer / --lr_scheduler that bypass it.
        kwargs.setdefault("auto_configure_optimizers", False)
        # A mistyped option must be an error, also when it is a prefix of a real one.
        parser_kwargs = {"allow_abbrev": False, **kwargs.pop("parser_kwargs", {})}
        super().__init__(*args, parser_kwargs=parser_kwargs, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # ``mimkit`` hands the CLI its arguments and keeps the whole command line in
        # ``sys.argv`` for Lightning's launcher (``mimkit.cli.command_argv``): both on purpose.
        # While parsing, argv[0] is the CLI's name, which nested help (``--model.help``) shows.
        saved = sys.argv
        sys.argv = [parser.prog, *saved[1:]]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                super().parse_arguments(parser, args)
        finally:
            sys.argv = saved

    def instantiate_classes(self) -> None:
        # A class rejecting its configured arguments (ValueError in its constructor) is a
        # config error: one line with that message instead of jsonargparse's page of retries.
        try:
            super().instantiate_classes()
        except ValueError as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(str(innermost_value_error(error))) from error

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Lightning 2.6 writes last.ckpt only together with a top-k save: keep the latest one.
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})

    def _set_checkpoint_dir(self) -> None:
        trainer = self.trainer
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None) is None:
                callback.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def _check_data(self, stage: str) -> None:
        # Before trainer.fit/validate/test, i.e. before Lightning starts the other ranks.
        preflight = getattr(self.datamodule, "preflight", None)
        if preflight is not None:
            preflight(stage, self.trainer.world_size)

    def before_fit(self) -> None:
        self._check_data("fit")
        self._set_checkpoint_dir()
        # mimkit DataModules restore their position from their own state_dict (the sampler);
        # Lightning only knows about DataLoader-level state and would warn wrongly.
        warnings.filterwarnings(
            "ignore", message="You're resuming from a checkpoint that ended before"
        )

    def before_validate(self) -> None:
        self._check_data("validate")
        self._set_checkpoint_dir()

    def before_test(self) -> None:
        self._check_data("test")
        self._set_checkpoint_dir()


def _link_image_size(parser: LightningArgumentParser) -> None:
    """The data module's ``img_size`` is the encoder's: one value, set under ``data``."""
    parser.link_arguments(
        "data.init_args.img_size", "model.init_args.encoder.init_args.img_size", apply_on="parse"
    )


class PretrainCLI(MimkitCLI):
    """``mimkit pretrain``: any :class:`PretrainModule` on any LightningDataModule."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        super().__init__(
            PretrainModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "callbacks": [
                    LearningRateMonitor(logging_interval="step"),
                    ReportSkippedSamples(),
                    RestoreRNG(),
                    RequeueOnSignal(),
                ],
                "plugins": [{"class_path": f"{AtomicCheckpointIO.__module__}.AtomicCheckpointIO"}],
                "default_root_dir": "runs/pretrain",
            },
            parser_kwargs={
                "prog": "mimkit pretrain",
                "description": "Pretrain an encoder with a masked-modeling method from a YAML recipe.",
            },
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: pretraining methods have no test or predict step."""
        commands = LightningCLI.subcommands()
        return {name: commands[name] for name in ("fit", "validate")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_lightning_class_args(ReconstructionPreview, "preview")
        _link_image_size(parser)
