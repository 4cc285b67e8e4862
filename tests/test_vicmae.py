"""ViC-MAE's loss against a per-view computation with the official InfoNCE formula."""

import math
from pathlib import Path

import torch
from tiny import CPU_TRAINER, record_info_nce_gather, tiny_encoder

from mimkit.pretrain import RandomMasking, ViCMAE
from mimkit.pretrain.masking import Mask

P = 8


def tiny_vicmae(**kwargs) -> ViCMAE:
    torch.manual_seed(0)
    encoder = tiny_encoder(patch_size=P, attn_backend="sdpa")
    defaults = dict(
        masking=RandomMasking(0.5),
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=4,
        projector_hidden_dim=64,
        projector_dim=16,
    )
    defaults.update(kwargs)
    return ViCMAE(encoder, **defaults)


def rows(mask: Mask, part: slice) -> Mask:
    return Mask(mask.ids_keep[part], mask.ids_masked[part], mask.mask[part])


def view_reconstruction(model, image, mask):
    """Mean squared error over masked patches against per-patch normalized pixels."""
    pred = model.decoder(model.encoder(image, mask.ids_keep), mask.ids_restore)
    losses = []
    for b in range(image.shape[0]):
        for i in range(16):
            if mask.mask[b, i]:
                row, col = divmod(i, 4)
                patch = image[b, :, row * P : (row + 1) * P, col * P : (col + 1) * P]
                t = patch.permute(1, 2, 0).reshape(-1)
                t = (t - t.mean()) / torch.sqrt(t.var(unbiased=True) + 1e-6)
                losses.append(((pred[b, i] - t) ** 2).mean())
    return torch.stack(losses).mean()


def simclr(u1, u2, tau):
    """The official -log(pos / (pos + neg)) over 2B samples, sample by sample."""
    z = torch.cat([u1, u2])
    z = z / z.norm(dim=1, keepdim=True)
    n = u1.shape[0]
    total = 0.0
    for i in range(2 * n):
        sims = torch.exp(z @ z[i] / tau)
        partner = (i + n) % (2 * n)
        neg = sum(sims[j] for j in range(2 * n) if j not in (i, partner))
        total = total - torch.log(sims[partner] / (sims[partner] + neg))
    return total / (2 * n)


def test_loss_equals_independent_reference():
    model = tiny_vicmae()
    first, second = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    out = model.compute_loss(
        {"pixels": first, "views": [first, second]}, generator=torch.Generator().manual_seed(2)
    )
    mask = model.mask(6, torch.Generator().manual_seed(2))  # one draw for both views
    m1, m2 = rows(mask, slice(0, 3)), rows(mask, slice(3, 6))
    rec = 0.5 * (view_reconstruction(model, first, m1) + view_reconstruction(model, second, m2))
    u1 = model.projector(model.encoder(first, m1.ids_keep)[:, 1:].mean(dim=1))
    u2 = model.projector(model.encoder(second, m2.ids_keep)[:, 1:].mean(dim=1))
    nce = simclr(u1, u2, 0.1)
    torch.testing.assert_close(out["loss_contrastive"], nce.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"], 0.03 * nce + 0.97 * rec, rtol=1e-4, atol=1e-5)
    assert math.isclose(model.contrastive_weight + model.reconstruction_weight, 1.0)


def test_loss_goes_down_and_views_pull_together():
    model = tiny_vicmae(contrastive_weight=0.5, reconstruction_weight=0.5)
    images = torch.randn(6, 3, 32, 32)
    batch = {"pixels": images, "views": [images, images + 0.1 * torch.randn_like(images)]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for step in range(8):
        out = model.compute_loss(batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append((out["loss"].item(), out["loss_contrastive"].item()))
    first, last = history[0], history[-1]
    assert last[0] < 0.85 * first[0]
    assert last[1] < first[1]


def test_video_clips_give_frame_pairs():
    model = tiny_vicmae()
    clip = torch.randn(3, 3, 2, 32, 32)  # (B, C, T, H, W): two frames per clip
    from_clip = model.compute_loss({"pixels": clip}, torch.Generator().manual_seed(4))
    views = [clip[:, :, 0], clip[:, :, 1]]
    from_views = model.compute_loss(
        {"pixels": views[0], "views": views}, torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(from_clip["loss"], from_views["loss"])


def test_video_frame_pairs_are_the_views_and_the_k400_recipe_trains(tmp_path):
    from test_video_data import write_video

    from mimkit.cli import main
    from mimkit.data import TwoCropViews
    from mimkit.data.video import VideoFolder

    videos = tmp_path / "videos"
    for name in ("a", "b"):
        (videos / name).mkdir(parents=True)
        write_video(videos / name / "0.mp4", num_frames=20)
    data = VideoFolder(
        videos, img_size=32, num_frames=2, sampling_rate=6, batch_size=2, num_workers=0,
        mean=(0.0,) * 3, std=(1.0,) * 3, views=TwoCropViews(color=False),
    )  # fmt: skip
    data.setup("fit")
    sample = data.train_dataset[0]
    first, second = sample["views"]
    assert first.shape == second.shape == (3, 32, 32) and sample["pixels"] is first
    index = [round(float(view[0].mean()) * 255 / 10) for view in (first, second)]
    assert index[1] - index[0] == 6  # two frames sampling_rate apart, one per view

    recipe = (
        Path(__file__).resolve().parents[1] / "recipes/pretrain/vicmae_vit_base_patch16_k400.yaml"
    )
    args = [
        "pretrain", "fit", "--config", str(recipe), "--data.root", str(videos),
        "--data.img_size", "32", "--data.batch_size", "2", "--data.num_workers", "0",
        "--data.sampling_rate", "4",
        "--model.encoder.init_args.name", "vit_tiny_patch16_224",
        "--model.encoder.init_args.patch_size", "8",
        "--model.encoder.init_args.model_kwargs", '{"depth": 1}',
        "--model.decoder_dim", "32", "--model.decoder_depth", "1", "--model.decoder_heads", "2",
        "--model.projector_hidden_dim", "32", "--model.projector_dim", "16",
        *CPU_TRAINER, "--trainer.strategy", "auto", "--trainer.accumulate_grad_batches", "1",
        "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--preview.every_n_steps", "0",
    ]  # fmt: skip
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["mimkit"]["method"] == "ViCMAE"


def test_negatives_come_from_every_rank_in_training_only(monkeypatch):
    """Validation loaders may give ranks unequal batches: no collective there."""
    import mimkit.pretrain.vicmae as vicmae_module

    gathers = record_info_nce_gather(monkeypatch, vicmae_module)
    model = tiny_vicmae()
    images = torch.randn(2, 3, 32, 32)
    model.compute_loss({"pixels": images, "views": [images, images]})
    model.eval()
    model.compute_loss({"pixels": images, "views": [images, images]})
    assert gathers == [True, False]
