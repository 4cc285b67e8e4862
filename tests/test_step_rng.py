"""Training randomness: its own stream per rank and step, equal on a rerun and on resume."""

import lightning as L
import torch
from tiny import quiet_trainer, run_ranks_script, tiny_encoder

from mimkit.data import Synthetic
from mimkit.pretrain import MAE, RandomMasking
from mimkit.pretrain.step_rng import step_seed


class RecordingMAE(MAE):
    """A tiny MAE that records the visible ids of every training mask, as rank ``rank``."""

    def __init__(self, rank: int = 0) -> None:
        super().__init__(
            tiny_encoder(), RandomMasking(0.75), decoder_dim=32, decoder_depth=1, decoder_heads=4
        )
        self.rank = rank
        self.masks: list[list[int]] = []

    @property
    def global_rank(self) -> int:
        return self.rank

    def mask(self, batch_size, generator=None):
        drawn = super().mask(batch_size, generator)
        if generator is None and self.training:
            self.masks.append(drawn.ids_keep[0].tolist())
        return drawn


def train_masks(tmp_path, rank: int, **trainer_kwargs) -> list[list[int]]:
    L.seed_everything(0)
    model = RecordingMAE(rank)
    trainer = quiet_trainer(tmp_path, max_steps=3, **trainer_kwargs)
    trainer.fit(model, datamodule=Synthetic(img_size=32, batch_size=2, num_samples=16))
    return model.masks


def test_ranks_draw_their_own_masks_and_a_rerun_draws_the_same(tmp_path):
    rank0, rank1 = train_masks(tmp_path, 0), train_masks(tmp_path, 1)
    assert len(rank0) == len(rank1) == 3
    assert all(a != b for a, b in zip(rank0, rank1, strict=True))
    assert train_masks(tmp_path, 0) == rank0
    assert len({tuple(m) for m in rank0}) == 3  # and a new mask every step


def test_micro_batches_of_one_step_draw_different_masks(tmp_path):
    masks = train_masks(tmp_path, 0, accumulate_grad_batches=2)
    assert len(masks) == 6
    assert masks[0] != masks[1] and masks[2] != masks[3]


def test_step_seed_mixes_every_coordinate():
    seeds = {
        step_seed(run, rank, step, micro)
        for run in (0, 1)
        for rank in (0, 1)
        for step in (0, 1)
        for micro in (0, 1)
    }
    assert len(seeds) == 16
    assert step_seed(2**64 + 5, 0, 0, 0) == step_seed(5, 0, 0, 0)  # any torch seed fits


DDP_SCRIPT = """
import sys
import lightning as L
sys.path.insert(0, {tests!r})
from test_step_rng import RecordingMAE
from mimkit.data import Synthetic

class Ranked(RecordingMAE):
    seeds = []

    @property
    def global_rank(self):
        return self.trainer.global_rank

    def on_train_epoch_start(self):
        self.seeds.append(self.trainer.datamodule.train_sampler.seed)

L.seed_everything(0)
model = Ranked()
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    limit_val_batches=0, num_sanity_val_steps=0, limit_train_batches=1,
    reload_dataloaders_every_n_epochs=1,
)
trainer.fit(model, datamodule=Synthetic(img_size=32, batch_size=2, num_samples=16))
with open({out!r} + str(trainer.global_rank), "w") as handle:
    handle.write(repr((model.masks, model.seeds)))
"""


def test_two_ddp_processes_draw_different_masks_from_one_permutation(tmp_path):
    """seed_everything seeds every rank alike: the masks must differ all the same, and the
    data permutation must not, also when the loader is rebuilt after training started."""
    (rank0, seeds0), (rank1, seeds1) = run_ranks_script(tmp_path, DDP_SCRIPT)
    assert len(seeds0) == 2 and seeds0 == seeds1  # two epochs, each loader built anew
    assert len(rank0) == len(rank1) == 2
    assert all(a != b for a, b in zip(rank0, rank1, strict=True))
    assert torch.tensor(rank0).shape == (2, 4)  # 4 of 16 patches visible
