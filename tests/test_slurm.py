"""A real SLURM cluster (munge + slurmctld + two emulated slurmd nodes) running `mimkit submit`.

The fixture installs nothing: it uses slurmctld / slurmd / munged / sbatch when they are on
PATH (``.ci/run`` installs them with apt) and skips otherwise. Everything lives in a private
directory under /tmp (munge's socket directory and all its parents must be world-executable,
which pytest's tmp_path is not), on free ports, and only the daemons started here are stopped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mimkit.submit import main as submit

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "srun", "scancel")
MISSING = [d for d in DAEMONS if shutil.which(d) is None]

RECIPE = """
seed_everything: 0
trainer:
  accelerator: cpu
  strategy: ddp
  precision: 32-true
  max_steps: 12
  log_every_n_steps: 1
  enable_progress_bar: false
  limit_val_batches: 0
model:
  class_path: mimkit.pretrain.MAE
  init_args:
    encoder:
      class_path: mimkit.pretrain.ViTEncoder
      init_args:
        name: vit_tiny_patch16_224
        patch_size: 8
        model_kwargs: {depth: 1, embed_dim: 64, num_heads: 2}
    decoder_dim: 32
    decoder_depth: 1
    decoder_heads: 2
    warmup_steps: 2
data:
  class_path: mimkit.data.Synthetic
  init_args: {img_size: 32, batch_size: 2, num_samples: 64, num_val_samples: 0}
checkpoint:
  every_n_train_steps: 1
preview:
  every_n_steps: 1000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """munged, slurmctld and two ``slurmd -N`` nodes of 2 CPUs each, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def _start(self, *command: str) -> None:
        log = open(self.root / f"{Path(command[0]).name}-{len(self.processes)}.log", "wb")
        self.processes.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        )

    def start(self) -> None:
        root = self.root
        for folder in ("munge", "state", "spool"):
            (root / folder).mkdir()
        (root / "munge").chmod(0o755)
        key = root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        socket_path = root / "munge" / "munge.socket"
        self._start(
            "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
            f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
            f"--seed-file={root}/munge/munged.seed",
        )  # fmt: skip
        host = socket.gethostname()
        ports = [free_port() for _ in range(3)]
        nodes = "\n".join(
            f"NodeName=n{i} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[i]} CPUs=2 "
            "RealMemory=2000 State=UNKNOWN"
            for i in (1, 2)
        )
        (root / "slurm.conf").write_text(
            f"""ClusterName=mimkit{ports[0]}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=600
InactiveLimit=0
{nodes}
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""
        )
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start; see {root}/munge/munged.log")
            time.sleep(0.1)
        self._start("slurmctld", "-D", "-i", "-f", str(root / "slurm.conf"))
        for name in ("n1", "n2"):
            self._start("slurmd", "-D", "-N", name, "-f", str(root / "slurm.conf"))
        deadline = time.monotonic() + 30
        while True:
            out = self.run("sinfo", "-h", "-o", "%T %D", check=False).stdout
            if out.strip() == "idle 2":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nodes did not come up (sinfo: {out!r}); logs in {root}")
            time.sleep(0.3)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check)

    def job(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info.get('JobState')}")
            time.sleep(0.5)

    def daemon_logs(self, chars: int = 1500) -> str:
        """The tails of the controller's and the nodes' logs, for a failure message."""
        logs = [self.root / "slurmctld.log", *sorted(self.root.glob("slurmd*.log"))]
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in logs
            if path.exists()
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if MISSING or os.geteuid() != 0:
        pytest.skip(
            f"needs SLURM and munge ({', '.join(MISSING) or 'root'} missing: apt-get install "
            "slurmctld slurmd slurm-client munge) and root to run the private daemons"
        )
    root = Path(tempfile.mkdtemp(prefix="mimkit-slurm-", dir="/tmp"))
    root.chmod(0o755)
    instance = Cluster(root)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)


def submit_job(cluster: Cluster, monkeypatch, name: str, capsys) -> tuple[str, Path]:
    recipe = cluster.root / "tiny.yaml"
    recipe.write_text(RECIPE)
    for key in ("SLURM_CONF",):
        monkeypatch.setenv(key, cluster.env[key])
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # emulated node names do not resolve
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = submit(
        [
            "--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "2",
            "--cpus-per-task", "1", "--time", "10", "--job-name", name,
            "--runs-root", str(cluster.root / "runs"), "--master-port", str(free_port()),
            "--", "pretrain", "fit", "--config", str(recipe),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = out.split("Submitted batch job")[1].split()[0]
    return job_id, cluster.root / "runs" / f"{name}-{job_id}"


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)


def test_two_nodes_train_and_a_preempted_job_requeues_and_resumes_exactly(
    cluster, monkeypatch, capsys
):
    job, run_dir = submit_job(cluster, monkeypatch, "whole", capsys)
    info = cluster.wait(job)
    log = (cluster.root / "runs" / f"whole-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert "MEMBER: 4/4" in log  # 2 nodes x 2 tasks: world size 4 over gloo
    whole = final_state(run_dir)
    assert whole["global_step"] == 12

    job, run_dir = submit_job(cluster, monkeypatch, "preempted", capsys)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 90
    while not checkpoint.exists():  # training has started: the handlers are in place
        assert time.monotonic() < deadline, "the preempted job never started training"
        time.sleep(0.2)
    cluster.run("scancel", "--signal=USR1", job)
    deadline = time.monotonic() + 60
    while (state := cluster.job(job)).get("Restarts", "0") == "0" or state["JobState"] != "PENDING":
        assert time.monotonic() < deadline, f"job {job} was not requeued: {state}"
        time.sleep(0.3)
    # a requeued job waits ~120 s (BeginTime) before it may start again
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = cluster.wait(job)
    log = (cluster.root / "runs" / f"preempted-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{log[-3000:]}\n{cluster.daemon_logs()}"
    assert "requeueing SLURM job" in log, log[-3000:]
    assert "(restart 1)" in log and "Restored all states" in log, log[-3000:]
    resumed = final_state(run_dir)
    assert resumed["global_step"] == 12
    for name, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, msg=name)


def test_submit_rejects_a_device_count_contradicting_the_job(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    code = submit(["--nodes", "2", "--gpus-per-node", "4", "--dry-run", "--",
                   "pretrain", "fit", "--config", str(recipe), "--trainer.devices", "2"])  # fmt: skip
    assert code == 2
    assert "trainer.devices=2 but the job asks for 4" in capsys.readouterr().err


def test_dry_run_prints_the_filled_template(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    code = submit(["--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--account",
                   "proj", "--qos", "high", "--time", "48:00:00", "--runs-root", str(tmp_path),
                   "--dry-run", "--", "pretrain", "fit", "--config", str(recipe)])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    script = captured.out
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --time=48:00:00", f"#SBATCH --output={tmp_path}/%x-%j.out"):  # fmt: skip
        assert line in script.splitlines(), line
    assert f"set -- pretrain fit --config {recipe}" in script
    assert "srun --kill-on-bad-exit=1" in script and "--ckpt_path last" in script
    assert script.count("#SBATCH --nodes") == 1  # the template's own lines are replaced
    assert "trainer.num_nodes" not in captured.err  # the tiny recipe sets no num_nodes
    assert list(tmp_path.iterdir()) == [recipe]  # nothing written or submitted
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("named", [None, "split", "joined"])
def test_the_template_runs_in_the_job_dir_or_the_one_the_command_names(tmp_path, named):
    """The sbatch script with a stand-in ``srun`` that records the command it is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    srun.chmod(0o755)
    earlier = tmp_path / "runs" / "mimkit-r-41"
    command = ["pretrain", "fit", "--config", "r.yaml"]
    if named == "split":
        command += ["--trainer.default_root_dir", str(earlier)]
    elif named == "joined":
        command += [f"--trainer.default_root_dir={earlier}"]
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SRUN_ARGS=str(tmp_path / "a"),
               SLURM_JOB_NAME="mimkit-r", SLURM_JOB_ID="42", SLURM_JOB_NODELIST="n1",
               SLURM_JOB_NUM_NODES="1", SLURM_NTASKS_PER_NODE="2", MASTER_ADDR="127.0.0.1",
               MIMKIT_RUNS_ROOT=str(tmp_path / "runs"))  # fmt: skip
    template = Path(__file__).resolve().parents[1] / "slurm" / "pretrain.sbatch"
    done = subprocess.run(["bash", str(template), *command], env=env, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "a").read_text().splitlines()
    run_dir = tmp_path / "runs" / "mimkit-r-42" if named is None else earlier
    assert run_dir.is_dir() and f"run dir {run_dir}," in done.stdout
    roots = [a for i, a in enumerate(args) if "default_root_dir" in a or
             (i and args[i - 1] == "--trainer.default_root_dir")]  # fmt: skip
    assert len([r for r in roots if r.startswith("--trainer.default_root_dir")]) == 1
    assert str(run_dir) in " ".join(roots)
    assert args[-2:] == ["--ckpt_path", "last"]
