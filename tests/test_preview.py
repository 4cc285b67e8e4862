"""The reconstruction preview draws on rank 0 alone, so it must stay off under sharded
strategies, whose forward pass needs every rank."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from mimkit.pretrain.fsdp import BlockFSDPStrategy
from mimkit.pretrain.preview import ReconstructionPreview


class Recorder(torch.nn.Module):
    """Stands in for a method: records reconstruct calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def reconstruct(self, pixels, generator=None):
        self.calls += 1
        return {"original": pixels, "masked": pixels, "reconstruction": pixels}


def fake_trainer(strategy, tmp_path):
    return SimpleNamespace(
        strategy=strategy, global_step=2, sanity_checking=False, default_root_dir=str(tmp_path),
        datamodule=None, loggers=[],
    )  # fmt: skip


@pytest.mark.parametrize("strategy", [FSDPStrategy(), BlockFSDPStrategy()], ids=type)
def test_no_pictures_and_one_warning_under_sharded_strategies(strategy, tmp_path):
    preview, module = ReconstructionPreview(every_n_steps=2), Recorder()
    module.device = torch.device("cpu")
    batch = {"pixels": torch.rand(2, 3, 8, 8)}
    trainer = fake_trainer(strategy, tmp_path)
    with pytest.warns(UserWarning, match="draws no pictures under .*FSDPStrategy") as said:
        for _ in range(3):
            preview.on_train_batch_end(trainer, module, None, batch, 0)
        preview.on_train_end(trainer, module)
    assert len([w for w in said if "draws no pictures" in str(w.message)]) == 1
    assert module.calls == 0 and not (tmp_path / "previews").exists()


def test_pictures_under_ddp(tmp_path):
    preview, module = ReconstructionPreview(every_n_steps=2), Recorder()
    module.device = torch.device("cpu")
    trainer = fake_trainer(DDPStrategy(), tmp_path)
    preview.on_train_batch_end(trainer, module, None, {"pixels": torch.rand(2, 3, 8, 8)}, 0)
    assert module.calls == 1 and (tmp_path / "previews" / "step_0000002.png").exists()
