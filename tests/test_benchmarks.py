"""The benchmark scripts keep parsing their options, and write results into a fresh folder."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HELPERS = {"results_file.py", "synthetic_images.py"}
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)

# One interpreter for all scripts (their imports are shared): each runs as __main__ with
# --help and must exit 0 after printing its options.
DRIVER = """
import contextlib, io, runpy, sys
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as done:
        code = done.code or 0
    else:
        code = "no exit"
    print(path, code, "--" in out.getvalue())
"""


def test_every_benchmark_script_parses_its_options():
    paths = [str(BENCHMARKS / name) for name in SCRIPTS]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *paths], capture_output=True, text=True, cwd=BENCHMARKS
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = [line.rsplit(" ", 2) for line in done.stdout.strip().splitlines()]
    assert [(Path(p).name, code, shown) for p, code, shown in results] == [
        (name, "0", "True") for name in SCRIPTS
    ]


def test_results_are_written_into_a_folder_that_does_not_exist_yet(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from results_file import write_results

    out = write_results(tmp_path / "results" / "new" / "run.json", {"rows": [1, 2]})
    assert json.loads(out.read_text()) == {"rows": [1, 2]}


def test_end_to_end_benchmark_trains_on_every_source(tmp_path):
    """Synthetic batches, shards (worker and device decoding) and a folder, through Lightning."""
    out = tmp_path / "results" / "e2e.json"
    tiny = [
        "--model.encoder.init_args.name", "vit_tiny_patch16_224",
        "--model.encoder.init_args.img_size", "32", "--model.encoder.init_args.patch_size", "8",
        "--model.encoder.init_args.model_kwargs", '{"depth": 1}', "--model.decoder_depth", "1",
        "--model.decoder_dim", "32", "--model.decoder_heads", "2",
        "--model.compile_modules", "false",
    ]  # fmt: skip
    args = ["--device", "cpu", "--workers", "1", "--batch-size", "4", "--images", "16"]
    args += ["--size", "48", "--warmup", "1", "--steps", "2", "--json", str(out), "--", *tiny]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "end_to_end.py"), *args],
        capture_output=True, text=True, cwd=BENCHMARKS.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["source"] for row in rows] == ["synthetic", "shards", "shards+device", "folder"]
    assert all(row["samples_per_s"] > 0 and row["batch_size"] == 4 for row in rows)
    assert rows[0]["vs_synthetic"] == 1.0
    assert "| shards+device | 1 | 4 |" in done.stdout


# Parses a command line with the script's own parser, then stops before any work.
PARSE_ONLY = """
import argparse, runpy, shlex, sys
parse = argparse.ArgumentParser.parse_args
def parse_and_stop(self, args=None, namespace=None):
    parse(self, args, namespace)
    raise SystemExit("parsed")
argparse.ArgumentParser.parse_args = parse_and_stop
for line in sys.stdin.read().splitlines():
    script, *argv = shlex.split(line)
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        print(script, done.code)
"""


def test_gpu_checklist_commands_parse(tmp_path):
    """Every benchmark command of benchmarks/gpu_checklist.sh is accepted by its script, so no
    option typo waits to be found on a GPU machine."""
    env = {"DRY_RUN": "1", "RESULTS": str(tmp_path), "PATH": "/usr/bin:/bin"}
    listing = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_checklist.sh"), "all"],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    commands = []
    for line in listing.splitlines():
        if line.startswith("== ") and "BENCH=" in line:
            bench, _, args = line.split("BENCH=", 1)[1].partition(" ")
            # run_on_gpu.sh adds --device cuda; step() adds --json
            commands.append(f"{bench}.py --device cuda {args} --json {tmp_path}/x.json")
    assert len(commands) >= 6
    done = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY], input="\n".join(commands), capture_output=True,
        text=True, cwd=BENCHMARKS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = [line.rsplit(" ", 1) for line in done.stdout.strip().splitlines()]
    assert [code for _, code in parsed] == ["parsed"] * len(commands), done.stderr[-2000:]
