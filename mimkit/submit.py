"""``mimkit submit``: fill the sbatch template from options and the recipe, check, submit.

    mimkit submit --nodes 4 --gpus-per-node 8 --time 48:00:00 --partition gpu --account proj \\
        -- pretrain fit --config recipes/pretrain/mae_vit_large_patch16_in1k.yaml
    mimkit submit --dry-run ...     # print the script instead of submitting it

The script is ``slurm/pretrain.sbatch`` with its ``#SBATCH`` lines replaced by ones built from
the options (one task per GPU, ``--signal=USR1@120``, ``--requeue``, ``--open-mode=append``).
Before anything is submitted, ``trainer.devices`` and ``trainer.num_nodes`` given on the
command line are checked against ``--gpus-per-node`` / ``--nodes`` (a contradiction is an
error); the recipe's values are replaced by the job's, with a notice (an error with
``--strict``), since recipes carry single-node defaults.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .help_format import DefaultsHelpFormatter

# slurm/ installs as the data package mimkit.slurm, so the template ships with every install.
TEMPLATE = Path(str(resources.files("mimkit.slurm").joinpath("pretrain.sbatch")))


class SubmitError(ValueError):
    """A job that cannot run as asked (reported before submission)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkit submit",
        description="Submit a mimkit command to SLURM. Put the mimkit command after `--`, "
        "e.g. `-- pretrain fit --config R.yaml`; the job resumes from its run directory's "
        "last.ckpt when requeued.",
        formatter_class=DefaultsHelpFormatter,
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--nodes", type=int, default=1, help="nodes (trainer.num_nodes)")
    add("--gpus-per-node", type=int, default=8, help="GPUs per node; 0 for a CPU job")
    add(
        "--tasks-per-node",
        type=int,
        default=None,
        help="tasks (= trainer.devices) per node; default: --gpus-per-node (1 for CPU jobs)",
    )
    add("--cpus-per-task", type=int, default=10, help="CPU cores per task (data workers + 1)")
    add("--mem", default=None, help="memory per node, e.g. 480G (default: the cluster's)")
    add("--time", default="48:00:00", help="time limit, e.g. 48:00:00")
    add("--partition", default=None, help="#SBATCH --partition (default: the cluster's)")
    add("--account", default=None, help="#SBATCH --account to charge")
    add("--qos", default=None, help="#SBATCH --qos")
    add("--constraint", default=None, help="#SBATCH --constraint, e.g. a GPU feature")
    add("--job-name", default=None, help="default: mimkit-<recipe name>")
    add("--signal-lead", type=int, default=120, help="seconds of SIGUSR1 warning before the limit")
    add(
        "--runs-root", default="runs/slurm", help="run directories: <runs-root>/<job-name>-<job-id>"
    )
    add("--master-port", type=int, default=None, help="rendezvous port (default: from the job id)")
    add("--sbatch-arg", action="append", default=[], help="extra #SBATCH option, repeatable")
    add("--template", default=str(TEMPLATE), help="sbatch template to fill")
    add("--strict", action="store_true", help="recipe devices/num_nodes must match the job too")
    add("--dry-run", action="store_true", help="print the script instead of submitting it")
    return parser


def _option(args: Sequence[str], name: str) -> str | None:
    """Last value of ``--name value`` / ``--name=value`` in a command line."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _trainer_setting(command: Sequence[str], key: str) -> tuple[Any, str] | None:
    """``trainer.<key>`` from the command line, else the recipe; with where it was found."""
    given = _option(command, f"--trainer.{key}")
    if given is not None:
        return yaml.safe_load(given), "the command line"
    recipe = _option(command, "--config")
    if recipe is None:
        return None
    config = yaml.safe_load(Path(recipe).read_text()) or {}
    trainer = config.get("trainer") or {}
    if key in trainer:
        return trainer[key], recipe
    return None


def check_sizes(
    command: Sequence[str], nodes: int, tasks_per_node: int, strict: bool = False
) -> list[str]:
    """Checks the trainer's devices / num_nodes against the job; returns notices.

    ``"auto"`` and ``-1`` are fine (the job sets them). A different number on the command line
    (or in the recipe with ``strict``) raises :class:`SubmitError`; in the recipe it gives a
    notice, since the job overrides it.
    """
    notices = []
    for key, wanted, flag in (
        ("devices", tasks_per_node, "--gpus-per-node (or --tasks-per-node)"),
        ("num_nodes", nodes, "--nodes"),
    ):
        found = _trainer_setting(command, key)
        if found is None:
            continue
        value, where = found
        if value in ("auto", -1, "-1", None):
            continue
        count = len(value) if isinstance(value, list) else int(value)
        if count != wanted and where != "the command line" and not strict:
            notices.append(
                f"note: {where} sets trainer.{key}={value!r}; the job runs with "
                f"trainer.{key}={wanted} ({flag} {wanted}), which changes the effective batch "
                "and so the scaled learning rate."
            )
        elif count != wanted:
            raise SubmitError(
                f"{where} sets trainer.{key}={value!r} but the job asks for {wanted} "
                f"({flag} {wanted}). Make them agree: change {flag}, or set trainer.{key} to "
                f"{wanted} or 'auto' (the job passes --trainer.{key} from SLURM anyway)."
            )
    return notices


def _job_name(command: Sequence[str]) -> str:
    recipe = _option(command, "--config")
    stem = Path(recipe).stem if recipe else (command[0] if command else "job")
    return "mimkit-" + re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def render(
    options: argparse.Namespace, command: Sequence[str], raw_args: Sequence[str] = ()
) -> str:
    """The sbatch script: generated ``#SBATCH`` lines, environment, then the template body."""
    cpu = options.gpus_per_node == 0
    tasks = options.tasks_per_node or (1 if cpu else options.gpus_per_node)
    job_name = options.job_name or _job_name(command)
    runs_root = Path(options.runs_root).absolute()
    directives = [
        f"--job-name={job_name}",
        f"--nodes={options.nodes}",
        f"--ntasks-per-node={tasks}",
        f"--cpus-per-task={options.cpus_per_task}",
        f"--time={options.time}",
        f"--signal=USR1@{options.signal_lead}",
        "--requeue",
        "--open-mode=append",
        f"--output={runs_root}/%x-%j.out",
    ]
    if not cpu:
        directives.insert(3, f"--gpus-per-node={options.gpus_per_node}")
    for name in ("mem", "partition", "account", "qos", "constraint"):
        value = getattr(options, name)
        if value:
            directives.append(f"--{name}={value}")
    directives += options.sbatch_arg
    template = Path(options.template).read_text().splitlines()
    body = [line for line in template[1:] if not line.startswith("#SBATCH")]
    env = {
        "MIMKIT_RUNS_ROOT": str(runs_root),
        "MIMKIT": f"{shlex.quote(sys.executable)} -m mimkit",
    }
    if options.master_port:
        env["MASTER_PORT"] = str(options.master_port)
    command = list(command)
    if cpu:
        command += ["--trainer.accelerator", "cpu"]
    lines = [template[0], *(f"#SBATCH {d}" for d in directives)]
    lines.append("# generated by: mimkit submit " + shlex.join(raw_args))
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append("set -- " + shlex.join(command))
    lines += body
    return "\n".join(lines) + "\n"


def main(args: Sequence[str]) -> int:
    """``mimkit submit [options] -- <mimkit command>``; returns the exit code."""
    args = list(args)
    split = args.index("--") if "--" in args else len(args)
    options = build_parser().parse_args(args[:split])
    command = args[split + 1 :] or []
    if not command:
        print("mimkit submit: give the mimkit command after `--`, e.g. -- pretrain fit "
              "--config R.yaml", file=sys.stderr)  # fmt: skip
        return 2
    tasks = options.tasks_per_node or (1 if options.gpus_per_node == 0 else options.gpus_per_node)
    try:
        for notice in check_sizes(command, options.nodes, tasks, options.strict):
            print(notice, file=sys.stderr)
    except (SubmitError, FileNotFoundError) as error:
        print(f"mimkit submit: {error}", file=sys.stderr)
        return 2
    script = render(options, command, args)
    if options.dry_run:
        print(script, end="")
        return 0
    runs_root = Path(options.runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    path = runs_root / f"{_job_name(command)}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(script)
    result = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode == 0:
        job = result.stdout.strip().split()[-1]
        name = options.job_name or _job_name(command)
        print(f"run directory: {runs_root.absolute()}/{name}-{job}  (log: {name}-{job}.out)")
    return result.returncode
