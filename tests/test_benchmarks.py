"""The benchmark scripts keep parsing their options, and write results into a fresh folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "results_file.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_parses_its_options(script):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--" in done.stdout


def test_results_are_written_into_a_folder_that_does_not_exist_yet(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from results_file import write_results

    out = write_results(tmp_path / "results" / "new" / "run.json", {"rows": [1, 2]})
    assert json.loads(out.read_text()) == {"rows": [1, 2]}
