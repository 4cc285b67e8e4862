"""Exact resume: a run interrupted mid-epoch by a signal ends with an uninterrupted run's weights."""

import itertools
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from mimkit.data.sampler import ResumableSampler, SeededSamples
from mimkit.pretrain.base import PretrainModule
from mimkit.pretrain_cli import PretrainCLI
from mimkit.resume import AtomicCheckpointIO, Preempted, RequeueOnSignal, rng_state, set_rng_state

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes/quickstart/mae_digits.yaml")


class SignalAtStep(Callback):
    """Sends SIGUSR1 to this process after optimizer step ``step`` (a simulated preemption)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def make_cli(root: Path, max_steps: int, extra: tuple[str, ...] = ()) -> PretrainCLI:
    # 3 batches per epoch, validation every epoch: the run crosses epoch and validation
    # boundaries, and the interruption at step 5 is mid-epoch (batch 2 of epoch 1).
    return PretrainCLI(
        args=[
            "--config",
            RECIPE,
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_steps",
            str(max_steps),
            "--trainer.max_epochs",
            "-1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(root),
            "--data.batch_size",
            "8",
            "--model.encoder.init_args.model_kwargs",
            '{"depth": 1, "embed_dim": 64, "num_heads": 2}',
            "--model.decoder_dim",
            "32",
            "--model.decoder_depth",
            "1",
            "--model.decoder_heads",
            "2",
            "--model.warmup_steps",
            "3",
            "--preview.every_n_steps",
            "1000",
            *extra,
        ],
        run=False,
    )


def fit(
    root: Path,
    max_steps: int,
    ckpt_path: str | None = None,
    stop_at: int | None = None,
    extra: tuple[str, ...] = (),
):
    cli = make_cli(root, max_steps, extra)
    if stop_at is not None:
        cli.trainer.callbacks.insert(0, SignalAtStep(stop_at))
    cli.before_fit()  # the run directory conventions (checkpoints/ under default_root_dir)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli.model.state_dict()


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    steps = 8
    reference = fit(tmp_path / "reference", steps)
    run = tmp_path / "interrupted"
    with pytest.raises(Preempted):
        fit(run, steps, stop_at=5)
    saved = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 5
    assert saved[datamodule_key(saved)]["sampler"] == {
        "seed": saved_seed(saved),
        "epoch": 1,
        "position": 16,
        "num_replicas": 1,
    }
    shutil.copytree(run, tmp_path / "reseeded")
    shutil.copytree(run, tmp_path / "control")
    resumed = fit(run, steps, ckpt_path="last")
    final = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == steps
    assert_same_weights(resumed, reference)
    assert not list(run.glob("checkpoints/.*tmp*")), "no temporary checkpoint files left"
    # The step's masks derive from the run seed (saved in the checkpoint), the rank and the
    # step: resuming under another seed_everything draws them again, exactly.
    other_seed = ("--seed_everything", "1")
    assert_same_weights(fit(tmp_path / "reseeded", steps, "last", extra=other_seed), reference)
    # control: without the saved run seed, that resume draws other masks and ends elsewhere
    monkeypatch.setattr(PretrainModule, "on_load_checkpoint", lambda self, checkpoint: None)
    control = fit(tmp_path / "control", steps, "last", extra=other_seed)
    assert any(not torch.allclose(control[k], reference[k]) for k in reference)


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)


def datamodule_key(checkpoint: dict) -> str:
    """The key Lightning stores the DataModule state under (its class's qualified name)."""
    return next(k for k in checkpoint if k.endswith("Digits"))


def saved_seed(checkpoint: dict) -> int:
    return checkpoint[datamodule_key(checkpoint)]["sampler"]["seed"]


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    data = list(range(23))
    full = ResumableSampler(data, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(i for i, _ in order) == data
    resumed = ResumableSampler(data, seed=0)
    resumed.load_state_dict({"seed": 3, "epoch": 2, "position": 10})
    assert list(resumed) == order[10:]
    assert list(resumed) == order  # the skip applies to the first iterator only
    # another epoch: another permutation, derived from seed + epoch only
    full.set_epoch(3)
    assert [i for i, _ in full] != [i for i, _ in order]
    # two ranks: disjoint halves of the same permutation, drop_last semantics
    ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    parts = [[i for i, _ in sampler] for sampler in ranks]
    assert len(parts[0]) == len(parts[1]) == 11
    assert not set(parts[0]) & set(parts[1])
    expected = torch.randperm(23, generator=torch.Generator().manual_seed(3)).tolist()[:22]
    assert parts[0] == expected[0::2] and parts[1] == expected[1::2]


@pytest.mark.parametrize("saved_ranks,ranks,stop", [(4, 2, 4), (2, 4, 4), (3, 2, 5), (2, 3, 5)])
def test_sampler_resumed_on_other_ranks_repeats_nothing(saved_ranks, ranks, stop):
    data = list(range(48))
    saved = [
        ResumableSampler(data, num_replicas=saved_ranks, rank=r, seed=5) for r in range(saved_ranks)
    ]
    used = set()
    for sampler in saved:
        sampler.set_epoch(1)
        used |= {i for i, _ in itertools.islice(sampler, stop)}  # then stopped
        sampler.advance(stop)
    state = saved[0].state_dict()
    assert state["num_replicas"] == saved_ranks and state["position"] == stop
    with pytest.warns(UserWarning, match=f"from a checkpoint saved on {saved_ranks}"):
        resumed = [ResumableSampler(data, num_replicas=ranks, rank=r, seed=0) for r in range(ranks)]
        for sampler in resumed:
            sampler.load_state_dict(state)
    rest = [i for sampler in resumed for i, _ in sampler]
    assert len(rest) == len(set(rest))
    assert not used & set(rest)  # nothing used before the stop is read again
    unread = set(data) - used - set(rest)  # left out of this epoch: less than one per rank
    assert len(unread) == (-len(used)) % ranks


def test_seeded_samples_do_not_touch_the_global_rng(monkeypatch):
    class RandomSample:
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3)

    def no_device_reseed(*args, **kwargs):
        raise AssertionError("a sample read reseeded a device generator")

    dataset = SeededSamples(RandomSample())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    # Masks and dropout on a GPU draw from its generator: a read must leave it alone.
    with monkeypatch.context() as patched:
        patched.setattr(torch.cuda, "manual_seed_all", no_device_reseed)
        first = dataset[(1, 123)]
        assert torch.equal(torch.get_rng_state(), before)
        assert torch.equal(dataset[(2, 123)], first)  # the seed, not the index or order, decides
        assert not torch.equal(dataset[(1, 124)], first)
    torch.manual_seed(123)
    torch.testing.assert_close(first, torch.rand(3))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    torch.testing.assert_close(torch.rand(4), expected[0])
    np.testing.assert_array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]


def test_atomic_checkpoint_write_never_leaves_a_torn_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, target)

    def killed_mid_write(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"torn")
        raise KeyboardInterrupt  # the process dies while writing

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_signal_handler_is_registered_only_during_fit():
    callback = RequeueOnSignal(signals=("SIGUSR1",))
    previous = signal.getsignal(signal.SIGUSR1)
    callback.setup(None, None, "fit")
    assert signal.getsignal(signal.SIGUSR1) == callback._on_signal
    os.kill(os.getpid(), signal.SIGUSR1)
    assert callback.received == "SIGUSR1"
    callback.teardown(None, None, "fit")
    assert signal.getsignal(signal.SIGUSR1) == previous
