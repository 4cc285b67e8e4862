import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from tiny import quiet_trainer
from torch import nn

import mimkit.pretrain.base as base
from mimkit.data import Synthetic
from mimkit.pretrain import MAE, RandomMasking, ViTEncoder
from mimkit.pretrain.base import (
    PretrainModule,
    ema_update,
    momentum_at,
    warmup_cosine,
    weight_decay_groups,
)
from mimkit.pretrain.errors import ConfigError
from mimkit.pretrain.fsdp import BlockFSDPStrategy


class Regression(PretrainModule):
    """A one-layer method whose loss can be forced to NaN at chosen steps."""

    def __init__(self, nan_steps=(), **kwargs):
        super().__init__(**kwargs)
        self.layer = nn.Linear(3, 1)
        self.norm = nn.LayerNorm(3)
        self.nan_steps = set(nan_steps)
        self.calls = 0
        self.weights_seen = []

    def compute_loss(self, batch, generator=None):
        self.weights_seen.append(self.layer.weight.detach().clone())
        loss = self.layer(self.norm(batch["pixels"].mean((2, 3)))).pow(2).mean()
        if self.calls in self.nan_steps:
            loss = loss * float("nan")
        self.calls += 1
        return {"loss": loss}


def tiny_data(batch_size=4, num_samples=32):
    return Synthetic(img_size=8, batch_size=batch_size, num_samples=num_samples, num_val_samples=4)


def test_weight_decay_groups_follow_mae():
    encoder = ViTEncoder(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, model_kwargs={"depth": 1}
    )
    model = MAE(encoder, RandomMasking(0.75), decoder_dim=32, decoder_depth=1, decoder_heads=4)
    decay, no_decay = weight_decay_groups(model.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0
    assert "encoder.blocks.0.attn.qkv.weight" in decayed
    assert "encoder.patch_embed.proj.weight" in decayed
    assert {
        "encoder.cls_token",
        "decoder.mask_token",
        "encoder.norm.weight",
        "encoder.blocks.0.attn.qkv.bias",
    } <= plain
    assert "encoder.pos_embed" not in decayed | plain  # fixed, not optimized
    assert all(p.ndim >= 2 for p in decay["params"])


def test_warmup_cosine_schedule_values():
    assert warmup_cosine(0, 10, 110) == 0.0
    assert warmup_cosine(5, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    assert momentum_at(0, 100, 0.996) == pytest.approx(0.996)
    assert momentum_at(100, 100, 0.996) == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)


def test_lr_scales_with_effective_batch_and_accumulation(tmp_path):
    model = Regression(warmup_steps=2)
    trainer = quiet_trainer(tmp_path, max_steps=4, accumulate_grad_batches=2)
    trainer.fit(model, datamodule=tiny_data(batch_size=4))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.base_lrs[0] == pytest.approx(1.5e-4 * (4 * 2) / 256)
    assert model.effective_batch_size() == 8
    # per-step schedule: 4 optimizer steps with 2 warmup steps, cosine to 0 at step 4
    expected = warmup_cosine(4, 2, 4) * 1.5e-4 * 8 / 256
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected)


def test_nonfinite_loss_skips_the_step(tmp_path):
    model = Regression(
        nan_steps={1}, scale_lr=False, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_train_batches=4, max_epochs=1)
    trainer.fit(model, datamodule=tiny_data())
    seen = model.weights_seen
    assert not torch.equal(seen[0], seen[1])  # step 0 updated the weights
    assert torch.equal(seen[1], seen[2])  # the NaN step 1 changed nothing
    assert model.nonfinite_streak == 0
    assert torch.isfinite(model.layer.weight).all()


def test_host_check_drops_the_whole_accumulated_update(tmp_path):
    model = Regression(
        nan_steps={1},  # the second micro-batch of the first window
        scale_lr=False,
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.05),
        nonfinite_check="host",
    )
    trainer = quiet_trainer(tmp_path, max_steps=3, accumulate_grad_batches=2, max_epochs=1)
    trainer.fit(model, datamodule=tiny_data())
    seen = model.weights_seen
    assert len(seen) == 6 and model.skipped_steps == 1
    torch.testing.assert_close(seen[2], seen[0], rtol=0, atol=0)  # micro-batch 0 not applied
    assert not torch.equal(seen[4], seen[2])
    state = trainer.optimizers[0].state[model.layer.weight]
    assert float(state["step"]) == 2  # no moment or step-count change for the dropped window
    assert torch.isfinite(model.layer.weight).all()


def test_consecutive_nonfinite_losses_stop_with_a_clear_error(tmp_path):
    model = Regression(nan_steps=set(range(100)), max_nonfinite_steps=3, nonfinite_check="host")
    trainer = quiet_trainer(tmp_path, max_steps=10)
    with pytest.raises(RuntimeError, match=r"NaN/inf for 3 consecutive steps"):
        trainer.fit(model, datamodule=tiny_data())


def fused_adamw(params):
    return torch.optim.AdamW(params, lr=0.05, fused=True)


ON_CUDA = pytest.param(
    "gpu",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ],
)


@pytest.mark.parametrize("accelerator", ["cpu", ON_CUDA])  # the fused CPU / CUDA AdamW
@pytest.mark.parametrize("nan_steps", [{1}, {1, 2}])
def test_device_nonfinite_check_skips_like_the_host_check(tmp_path, nan_steps, accelerator):
    final = {}
    for mode in ("host", "device"):
        torch.manual_seed(0)
        model = Regression(
            nan_steps=nan_steps, scale_lr=False, optimizer=fused_adamw, nonfinite_check=mode
        )
        trainer = quiet_trainer(
            tmp_path, accelerator=accelerator, max_steps=5, limit_train_batches=8, max_epochs=1
        )
        trainer.fit(model, datamodule=tiny_data())
        assert (model.nonfinite_guard is not None) == (mode == "device")
        seen = model.weights_seen
        assert not torch.equal(seen[0], seen[1])
        for step in nan_steps:  # the NaN step changed nothing
            torch.testing.assert_close(seen[step], seen[step + 1], rtol=0, atol=0)
        state = trainer.optimizers[0].state[model.layer.weight]
        finite_steps = len(seen) - len(nan_steps)
        assert float(state["step"]) == finite_steps
        assert model.skipped_steps == len(nan_steps)
        final[mode] = model.layer.weight.detach().clone()
    torch.testing.assert_close(final["device"], final["host"])


def test_device_nonfinite_check_stops_after_the_streak(tmp_path):
    model = Regression(
        nan_steps=set(range(2, 100)),
        optimizer=fused_adamw,
        max_nonfinite_steps=3,
        nonfinite_check="device",
        nonfinite_check_every=2,
    )
    trainer = quiet_trainer(tmp_path, max_steps=20)
    with pytest.raises(RuntimeError, match=r"NaN/inf for \d+ consecutive steps"):
        trainer.fit(model, datamodule=tiny_data())
    assert torch.isfinite(model.layer.weight).all()
    assert model.calls <= 2 + 3 + 2  # stopped within one read interval of the limit


def test_auto_nonfinite_check_needs_a_fused_optimizer(tmp_path):
    sgd = Regression(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    quiet_trainer(tmp_path, max_steps=1).fit(sgd, datamodule=tiny_data())
    assert sgd.nonfinite_guard is None
    fused = Regression(optimizer=fused_adamw)
    quiet_trainer(tmp_path, max_steps=1).fit(fused, datamodule=tiny_data())
    assert fused.nonfinite_guard is not None
    forced = Regression(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), nonfinite_check="device")
    with pytest.raises(ValueError, match="fused=True"):
        quiet_trainer(tmp_path, max_steps=1).fit(forced, datamodule=tiny_data())


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    online, target = nn.Linear(4, 4), nn.Linear(4, 4)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(online, target, 0.9)
    for old, new, src in zip(before, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * src)


class EmaPair(Regression):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.target = nn.Linear(3, 1).requires_grad_(False)

    def momentum_pairs(self):
        return [(self.layer, self.target)]


def test_momentum_pairs_follow_schedule_once_per_optimizer_step(tmp_path):
    model = EmaPair(ema_momentum=0.5, scale_lr=False)
    start = model.target.weight.detach().clone()
    trainer = quiet_trainer(tmp_path, max_steps=2, accumulate_grad_batches=2)
    trainer.fit(model, datamodule=tiny_data())
    # 2 optimizer steps over 4 batches: exactly two EMA updates with the cosine momentum
    online_after = [model.weights_seen[2], model.layer.weight.detach()]
    expected = start
    for step, online in enumerate(online_after):
        m = momentum_at(step, 2, 0.5)
        expected = m * expected + (1 - m) * online
    torch.testing.assert_close(model.target.weight, expected)
    assert not model.target.weight.requires_grad
    assert math.isclose(momentum_at(1, 2, 0.5), 0.75)


def test_ema_follows_the_short_accumulation_window_at_epoch_end(tmp_path, monkeypatch):
    momenta = []
    monkeypatch.setattr(base, "ema_update", lambda o, t, m: momenta.append(m))
    model = EmaPair(ema_momentum=0.5, scale_lr=False)
    # 5 batches of 4 per epoch, accumulating 2: steps after batches 2, 4 and 5
    trainer = quiet_trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(model, datamodule=tiny_data(batch_size=4, num_samples=20))
    assert trainer.global_step == 6
    assert len(momenta) == 6
    assert momenta == [momentum_at(step, 6, 0.5) for step in range(6)]


@pytest.mark.parametrize("strategy", [FSDPStrategy(), BlockFSDPStrategy()], ids=type)
def test_momentum_copies_are_refused_under_sharded_strategies(strategy):
    model = EmaPair()
    model._trainer = SimpleNamespace(strategy=strategy)
    with pytest.raises(ConfigError, match="needs whole parameters.*strategy ddp"):
        model.setup("fit")
    model._trainer = SimpleNamespace(strategy=DDPStrategy())
    model.setup("fit")  # the EMA works on replicas
    plain = Regression()  # and without momentum copies FSDP is fine
    plain._trainer = SimpleNamespace(strategy=strategy)
    plain.setup("fit")
