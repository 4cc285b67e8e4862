"""The ``mimkit`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

USAGE = """usage: mimkit <command> [options]

commands:
  pretrain   pretrain an encoder (MAE, ...) from a YAML recipe     mimkit pretrain fit --config R.yaml
  finetune   fine-tune a pretrained encoder on labeled data      mimkit finetune fit --config R.yaml --model.init_from CKPT
  probe      linear probe on frozen features                   mimkit probe fit --config R.yaml --model.init_from CKPT
  knn        k-NN evaluation of frozen features                mimkit knn --init_from CKPT --data.class_path ...
  export     write an encoder as timm-loadable safetensors     mimkit export CKPT OUT.safetensors
  submit     submit a recipe to SLURM
  shards     write webdataset shards
  plan       plan batch size, accumulation and memory for a recipe  mimkit plan --config R.yaml --gpus 8 --gpu-memory 80GB

`mimkit <command> --help` documents every option of a command.
"""

PENDING: dict[str, str] = {}


@contextmanager
def command_argv(command: str, args: Sequence[str]) -> Iterator[list[str]]:
    """Makes ``sys.argv`` the whole ``mimkit <command> <args>`` line while a CLI runs.

    Lightning's launcher for several devices on one machine starts the other ranks by
    running this process's command line again (``python <sys.argv[0]> <sys.argv[1:]>``,
    or ``python -m <main module> <sys.argv[1:]>``), so ``sys.argv`` must keep the program
    and the subcommand. Yields ``args`` as a list, for the CLI to parse.
    """
    saved = sys.argv
    sys.argv = [saved[0] if saved else "mimkit", command, *args]
    try:
        yield list(args)
    finally:
        sys.argv = saved


def run_pretrain(args: Sequence[str]) -> int:
    """``mimkit pretrain {fit,validate} --config recipe.yaml ...``."""
    from .pretrain_cli import PretrainCLI

    with command_argv("pretrain", args) as cli_args:
        PretrainCLI(args=cli_args)
    return 0


def run_submit(args: Sequence[str]) -> int:
    """``mimkit submit --nodes N --gpus-per-node G ... -- pretrain fit --config R.yaml``."""
    from .submit import main as submit_main

    return submit_main(args)


def run_shards(args: Sequence[str]) -> int:
    """``mimkit shards write --source S --out /shards/train-%06d.tar``."""
    from .shards_cli import run_shards as shards_main

    return shards_main(args)


def run_plan(args: Sequence[str]) -> int:
    """``mimkit plan --config recipe.yaml --gpus 8 --gpu-memory 80GB``."""
    from .plan import main as plan_main

    return plan_main(args)


def run_evaluation(name: str) -> Callable[[Sequence[str]], int]:
    """``mimkit finetune`` / ``probe`` / ``knn`` / ``export`` (imported on use)."""

    def run(args: Sequence[str]) -> int:
        from . import finetune_cli

        return getattr(finetune_cli, f"run_{name}")(args)

    return run


def commands() -> dict[str, Callable[[Sequence[str]], int]]:
    table: dict[str, Callable[[Sequence[str]], int]] = {"pretrain": run_pretrain}
    for name in ("finetune", "probe", "knn", "export"):
        table[name] = run_evaluation(name)
    table["plan"] = run_plan
    table["submit"] = run_submit
    table["shards"] = run_shards
    for name, what in PENDING.items():
        table.setdefault(name, _not_yet(name, what))
    return table


def _not_yet(name: str, what: str) -> Callable[[Sequence[str]], int]:
    def run(args: Sequence[str]) -> int:
        print(f"mimkit {name}: {what} is not yet available in this version.", file=sys.stderr)
        return 2

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches ``mimkit <command> ...``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    table = commands()
    if command not in table:
        print(f"mimkit: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(not_an_advert)
    try:
        return table[command](rest)
    except Exception as error:
        cause = user_error(error)
        if cause is None or os.environ.get("MIMKIT_TRACEBACK"):
            raise
        print(f"mimkit {command}: error: {cause}", file=sys.stderr)  # MIMKIT_TRACEBACK=1: raise
        return 2


def not_an_advert(record: logging.LogRecord) -> bool:
    """Drops Lightning's "Tip: try installing ..." line from every command's output."""
    return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def user_error(error: BaseException) -> BaseException | None:
    """The exception in ``error``'s chain whose message is for the user, if any.

    Those are mimkit's own configuration and checkpoint errors, missing files or folders,
    and Lightning's configuration errors (e.g. more devices than the machine has); the CLI
    prints them as one line. Everything else keeps its traceback.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from mimkit.data.errors import DataConfigError
    from mimkit.finetune import CheckpointError
    from mimkit.pretrain.errors import ConfigError

    kinds = (
        ConfigError,
        DataConfigError,
        CheckpointError,
        FileNotFoundError,
        NotADirectoryError,
        MisconfigurationException,  # Lightning's: devices, accelerators, strategies
    )
    return next((e for e in exception_chain(error) if isinstance(e, kinds)), None)


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what caused it (``__cause__``, else ``__context__``), and so on."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


if __name__ == "__main__":
    sys.exit(main())
