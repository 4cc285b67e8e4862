"""A NaN/inf loss on one DDP rank: every rank skips the step together, and the run goes on."""

from tiny import run_ranks_script

DDP_SCRIPT = """
import sys
import lightning as L
import torch
sys.path.insert(0, {tests!r})
from test_base import Regression, tiny_data

class OneRankBlowsUp(Regression):
    def compute_loss(self, batch, generator=None):
        out = super().compute_loss(batch, generator)
        if self.trainer.global_rank == 0 and self.calls == 2:  # rank 0's second batch
            out["loss"] = out["loss"] * float("inf")
        return out

L.seed_everything(0)
model = OneRankBlowsUp(
    scale_lr=False, optimizer=lambda p: torch.optim.AdamW(p, lr=0.05), nonfinite_check="host"
)
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    limit_val_batches=0, num_sanity_val_steps=0,
)
trainer.fit(model, datamodule=tiny_data())
state = trainer.optimizers[0].state[model.layer.weight]
seen = [w.flatten().tolist() for w in model.weights_seen]
result = dict(skipped=model.skipped_steps, steps=float(state["step"]), seen=seen,
              final=model.layer.weight.flatten().tolist())
with open({out!r} + str(trainer.global_rank), "w") as handle:
    handle.write(repr(result))
"""


def test_a_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    ranks = run_ranks_script(tmp_path, DDP_SCRIPT)
    for result in ranks:
        assert result["skipped"] == 1  # both ranks agreed to skip rank 0's bad step
        assert result["steps"] == 3  # 4 steps, one dropped: no moment update for it
        assert result["seen"][2] == result["seen"][1]  # the dropped step left the weights
        assert result["seen"][1] != result["seen"][0]
    assert ranks[0]["final"] == ranks[1]["final"]  # and the replicas stayed identical
