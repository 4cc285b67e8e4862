"""CMAE's loss against an explicit computation; stop-gradient target branch; EMA updates."""

import math

import pytest
import timm
import torch
from tiny import quiet_trainer, record_info_nce_gather, tiny_encoder

from mimkit.data import PixelShiftViews, Synthetic
from mimkit.pretrain import CMAE, RandomMasking, momentum_at

P = 8


def tiny_cmae(**kwargs) -> CMAE:
    torch.manual_seed(0)
    encoder = tiny_encoder(patch_size=P, attn_backend="sdpa")
    defaults = dict(
        masking=RandomMasking(0.65),
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=4,
        feature_decoder_depth=1,
        projector_hidden_dim=48,
        projector_dim=16,
    )
    defaults.update(kwargs)
    return CMAE(encoder, **defaults)


def norm_pix_patch(image, index):
    row, col = divmod(index, 4)
    target = image[:, row * P : (row + 1) * P, col * P : (col + 1) * P].permute(1, 2, 0).reshape(-1)
    return (target - target.mean()) / torch.sqrt(target.var(unbiased=True) + 1e-6)


def reference_loss(model: CMAE, online: torch.Tensor, target: torch.Tensor, mask) -> torch.Tensor:
    """Explicit formulas; the target encoder is timm's own ViT with copied EMA weights."""
    batch, tau = online.shape[0], model.temperature
    latent = model.encoder(online, mask.ids_keep)
    pred = model.decoder(latent, mask.ids_restore)  # (B, N, p*p*3), all patches
    rec = torch.stack(
        [
            ((pred[b, i] - norm_pix_patch(online[b], i)) ** 2).mean()
            for b in range(batch)
            for i in range(16)
            if mask.mask[b, i]
        ]
    ).mean()
    features = model.feature_decoder(latent, mask.ids_restore).mean(dim=1)
    query = model.predictor(model.projector(features))
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=P, depth=1
    )
    vit.load_state_dict(model.target_encoder.state_dict())
    with torch.no_grad():
        tokens = vit.patch_embed(target) + vit.pos_embed[:, 1:]
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(batch, -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in vit.blocks:
            x = block(x)  # no final norm in the target branch
        key = model.target_projector(x[:, 1:].mean(dim=1))
    nce = 0.0
    for i in range(batch):
        q = query[i] / query[i].norm()
        logits = torch.stack([q @ (k / k.norm()) / tau for k in key])
        nce = nce - (logits[i] - torch.logsumexp(logits, dim=0))
    return rec + 2 * tau * nce / batch


@pytest.mark.parametrize("cell_size,num_masked", [(1, 16 - int(16 * 0.35)), (2, 4 * 3)])
def test_loss_equals_independent_reference(cell_size, num_masked):
    model = tiny_cmae(masking=RandomMasking(0.65, cell_size=cell_size))
    online, target = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    batch = {"pixels": online, "views": [online, target]}
    out = model.compute_loss(batch, generator=torch.Generator().manual_seed(5))
    mask = model.mask(4, torch.Generator().manual_seed(5))
    assert mask.num_masked == num_masked
    expected = reference_loss(model, online, target, mask)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-4, atol=1e-5)


def test_default_masking_is_the_official_2x2_cell_masking():
    """65% of the 2 x 2 cells: on a 4 x 4 grid 3 of 4 cells, each wholly masked or visible."""
    small = dict(decoder_dim=32, decoder_depth=1, decoder_heads=4, feature_decoder_depth=1)
    model = CMAE(tiny_encoder(patch_size=P), **small)  # no masking given
    assert (model.masking.mask_ratio, model.masking.cell_size) == (0.65, 2)
    mask = model.mask(16, torch.Generator().manual_seed(0))
    assert mask.num_masked == 12 and model.masking.num_visible((4, 4)) == 4
    per_cell = mask.mask.view(16, 2, 2, 2, 2).sum((2, 4))
    assert set(per_cell.unique().tolist()) == {0, 4}
    with pytest.raises(ValueError, match="2x2 cells"):  # 24 px / 8 px patches: a 3 x 3 grid
        CMAE(tiny_encoder(patch_size=P, img_size=24), **small)


def test_target_branch_receives_no_gradient():
    model = tiny_cmae()
    online = torch.randn(4, 3, 32, 32)
    target = torch.randn(4, 3, 32, 32, requires_grad=True)
    model.compute_loss({"pixels": online, "views": [online, target]})["loss"].backward()
    assert target.grad is None
    for module in (model.target_encoder, model.target_projector):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    for module in (model.encoder, model.projector, model.predictor, model.feature_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    trainable = {n for n, _ in model.named_trainable_parameters()}
    assert not any(n.startswith("target_") for n in trainable)


def test_views_are_required_for_training_only():
    model = tiny_cmae()
    pixels = torch.randn(4, 3, 32, 32)
    with pytest.raises(ValueError, match="views"):
        model.compute_loss({"pixels": pixels})
    model.eval()
    assert torch.isfinite(model.compute_loss({"pixels": pixels})["loss"])


def test_ema_update_follows_formula_and_cosine_schedule(tmp_path):
    model = tiny_cmae()
    before = {n: p.detach().clone() for n, p in model.target_encoder.named_parameters()}
    proj_before = {n: p.detach().clone() for n, p in model.target_projector.named_parameters()}
    trainer = quiet_trainer(tmp_path, max_steps=1)
    views = PixelShiftViews(max_shift=2, flip=False, color=False)
    data = Synthetic(img_size=32, batch_size=4, num_samples=4, num_val_samples=0, views=views)
    trainer.fit(model, data)
    m = momentum_at(0, 1, 0.996, 1.0)
    assert m == pytest.approx(0.996)
    assert momentum_at(1, 2, 0.996, 1.0) == pytest.approx(
        1 - 0.004 * 0.5 * (1 + math.cos(math.pi / 2))
    )
    online = dict(model.encoder.named_parameters())
    changed = 0
    for name, target in model.target_encoder.named_parameters():
        expected = m * before[name] + (1 - m) * online[name].detach()
        torch.testing.assert_close(target, expected)
        changed += int(not torch.equal(target, before[name]))
    assert changed > 0
    online_proj = dict(model.projector.named_parameters())
    for name, target in model.target_projector.named_parameters():
        torch.testing.assert_close(
            target, m * proj_before[name] + (1 - m) * online_proj[name].detach()
        )


def test_negatives_come_from_every_rank_in_training_only(monkeypatch):
    """Validation loaders may give ranks unequal batches: no collective there."""
    import mimkit.pretrain.cmae as cmae_module

    gathers = record_info_nce_gather(monkeypatch, cmae_module)
    model = tiny_cmae()
    pixels = torch.randn(2, 3, 32, 32)
    model.compute_loss({"pixels": pixels, "views": [pixels, pixels]})
    model.eval()
    model.compute_loss({"pixels": pixels})
    assert gathers == [True, False]
