"""A real 2-process DDP validation (gloo, CPU): every sample is scored exactly once."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from test_eval_exact import Flaky, FlakyData
from tiny import quiet_trainer, tiny_encoder

from mimkit.finetune import LinearProbe


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_validation_scores_each_sample_once(tmp_path):
    """A probe that always predicts class 0 on labels 0, 1, 1, 1, 1: exactly 20%.

    Lightning's padded DistributedSampler would give the 2 ranks 3 samples each, the
    extra one a second copy of sample 0 (class 0): 2/6 = 33%.
    """
    torch.manual_seed(0)
    probe = LinearProbe(encoder=tiny_encoder(img_size=4, patch_size=2), num_classes=2, pool="avg")
    with torch.no_grad():
        probe.head[1].weight.zero_()
        probe.head[1].bias.copy_(torch.tensor([5.0, -5.0]))
    data = FlakyData(Flaky(5, bad=set(), labels=[0, 1, 1, 1, 1]), batch_size=2)
    trainer = quiet_trainer(tmp_path, devices=2, strategy="ddp_spawn", limit_val_batches=1.0)
    (result,) = trainer.validate(probe, datamodule=data)  # ranks read [0, 2, 4] and [1, 3]
    assert result["val/acc1"] == pytest.approx(0.2)
