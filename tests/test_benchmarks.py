"""The benchmark scripts keep parsing their options, and write results into a fresh folder."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "results_file.py")

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
