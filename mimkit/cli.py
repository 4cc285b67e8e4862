"""The ``mimkit`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

USAGE = """usage: mimkit <command> [options]

commands:
  pretrain   pretrain an encoder (MAE, ...) from a YAML recipe     mimkit pretrain fit --config R.yaml
  finetune   fine-tune a pretrained encoder on labeled data
  probe      linear probe on frozen features
  knn        k-NN evaluation of frozen features
  export     write an encoder as timm-loadable safetensors
  submit     submit a recipe to SLURM
  shards     write webdataset shards
  plan       plan batch size, accumulation and memory for a recipe

`mimkit <command> --help` documents every option of a command.
"""

PENDING: dict[str, str] = {
    "finetune": "fine-tuning (the evaluation issue)",
    "probe": "linear probing (the evaluation issue)",
    "knn": "k-NN evaluation (the evaluation issue)",
    "export": "encoder export (the evaluation issue)",
    "submit": "SLURM submission (the scale-out issue)",
    "shards": "webdataset shard writing (the scale-out issue)",
    "plan": "the batch/memory planner (the throughput issue)",
}


@contextmanager
def argv_for(prog: str, args: Sequence[str]) -> Iterator[None]:
    """Presents ``args`` as the process arguments while a LightningCLI parses them."""
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        yield
    finally:
        sys.argv = saved


def run_pretrain(args: Sequence[str]) -> int:
    """``mimkit pretrain {fit,validate} --config recipe.yaml ...``."""
    from .pretrain_cli import PretrainCLI

    with argv_for("mimkit pretrain", args):
        PretrainCLI()
    return 0


def commands() -> dict[str, Callable[[Sequence[str]], int]]:
    table: dict[str, Callable[[Sequence[str]], int]] = {"pretrain": run_pretrain}
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
    return table[command](rest)


if __name__ == "__main__":
    sys.exit(main())
