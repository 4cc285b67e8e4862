"""The built wheel: every module and data file, and a non-editable install that runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# Source folder of each installed package, as pyproject.toml's package-dir maps them.
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy, so that neither a stale build/ folder of the checkout leaks into the wheel nor
    # the build leaves one behind.
    source = out / "source"
    skip = shutil.ignore_patterns(".*", "build", "*.egg-info", "runs", "__pycache__", "results")
    shutil.copytree(ROOT, source, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, text=True, cwd=out,
    )  # fmt: skip
    (path,) = out.glob("mimkit-*.whl")
    return path


def test_wheel_holds_every_module_and_the_sbatch_template(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mimkit", "mimkit.data", "mimkit.slurm"} <= PACKAGE_DIRS.keys()
    for package, folder in PACKAGE_DIRS.items():
        sources = {p.name for p in (ROOT / folder).iterdir() if p.suffix in {".py", ".sbatch"}}
        in_wheel = package.replace(".", "/")
        shipped = {n.rsplit("/", 1)[1] for n in names if n.rsplit("/", 1)[0] == in_wheel}
        assert shipped == sources, package
    assert "mimkit/slurm/pretrain.sbatch" in names


def test_installed_wheel_submits_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer:\n  max_epochs: 1\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "mimkit", "submit", "--dry-run", "--nodes", "2",
         "--gpus-per-node", "4", "--", "pretrain", "fit", "--config", str(recipe)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --nodes=2" in result.stdout
    assert "srun --kill-on-bad-exit=1" in result.stdout  # the template's body
    where = subprocess.run(
        [sys.executable, "-c", "import mimkit.submit as s; print(s.__file__, s.TEMPLATE)"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(site) for p in where), where
