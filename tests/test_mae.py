"""MAE's loss against an independent, straightforward computation of the same objective."""

from functools import partial

import pytest
import timm
import torch
from timm.models.vision_transformer import Block
from tiny import HF_TINY_MAE_SIZES, tiny_encoder

from mimkit.pretrain import MAE, RandomMasking
from mimkit.pretrain.masking import random_mask


def tiny_mae(norm_pix_loss: bool = True, backend: str = "sdpa") -> MAE:
    torch.manual_seed(0)
    encoder = tiny_encoder(depth=2, attn_backend=backend)
    return MAE(
        encoder,
        RandomMasking(0.75),
        decoder_dim=32,
        decoder_depth=2,
        decoder_heads=4,
        norm_pix_loss=norm_pix_loss,
    )


def reference_loss(model: MAE, pixels: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Per-sample loop over plain timm modules, full decoder sequence, explicit formulas.

    masked: (B, N) bool. Weights are copied into timm's own ViT and Blocks, so none of
    mimkit's attention, gather or decoder code runs here.
    """
    enc = model.encoder
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2
    )
    vit.load_state_dict(enc.state_dict())
    dec = model.decoder
    dec_blocks = []
    for block in dec.blocks:
        ref_block = Block(
            32, 4, 4.0, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)
        )
        ref_block.load_state_dict(block.state_dict())
        dec_blocks.append(ref_block)
    p = 8
    total, count = torch.zeros(()), 0
    for b in range(pixels.shape[0]):
        image = pixels[b]
        tokens = vit.patch_embed(image[None])[0] + vit.pos_embed[0, 1:]
        visible = [i for i in range(16) if not masked[b, i]]
        x = torch.cat([vit.cls_token[0] + vit.pos_embed[0, :1], tokens[visible]])[None]
        for block in vit.blocks:
            x = block(x)
        latent = dec.embed(vit.norm(x))[0]
        full = [None] * 16
        for j, i in enumerate(visible):
            full[i] = latent[1 + j]
        full = [dec.mask_token[0, 0] if t is None else t for t in full]
        y = (torch.stack([latent[0], *full]) + dec.pos_embed[0])[None]
        for block in dec_blocks:
            y = block(y)
        pred = dec.pred(dec.norm(y))[0, 1:]  # (16, p*p*3)
        for i in range(16):
            if not masked[b, i]:
                continue
            row, col = divmod(i, 4)
            patch = image[:, row * p : (row + 1) * p, col * p : (col + 1) * p]
            target = patch.permute(1, 2, 0).reshape(-1)  # (p, p, C) flattened
            if model.norm_pix_loss:
                mean = target.mean()
                var = ((target - mean) ** 2).sum() / (target.numel() - 1)
                target = (target - mean) / torch.sqrt(var + 1e-6)
            total = total + ((pred[i] - target) ** 2).mean()
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_equals_independent_reference(norm_pix_loss):
    model = tiny_mae(norm_pix_loss)
    pixels = torch.randn(3, 3, 32, 32)
    gen = torch.Generator().manual_seed(7)
    loss = model.compute_loss({"pixels": pixels}, generator=gen)["loss"]
    mask = random_mask(3, 16, 0.75, generator=torch.Generator().manual_seed(7))
    expected = reference_loss(model, pixels, mask.mask)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_loss_covers_only_masked_patches():
    model = tiny_mae()
    pixels = torch.randn(2, 3, 32, 32)
    mask = random_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(1))
    # Changing visible pixels changes the encoder input, but changing a masked patch's
    # pixels outside the encoder must change the loss only through that patch's target.
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    base = model.compute_loss({"pixels": pixels}, generator=gen())["loss"]
    changed = pixels.clone()
    keep = mask.ids_keep[0, 0].item()
    row, col = divmod(keep, 4)
    with torch.no_grad():
        latent_a = model.encode(pixels, mask)
        changed[0, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += 1.0
        latent_b = model.encode(changed, mask)
    assert not torch.allclose(latent_a, latent_b)
    assert torch.isfinite(base)


def test_matches_transformers_vitmae_with_copied_weights():
    transformers = pytest.importorskip("transformers")
    model = tiny_mae().eval()
    config = transformers.ViTMAEConfig(
        image_size=32, patch_size=8, mask_ratio=0.75, **HF_TINY_MAE_SIZES
    )
    hf = transformers.ViTMAEForPreTraining(config).eval()
    state = hf_state_from_mimkit(model, hf.state_dict())
    if state is None:
        pytest.skip("this transformers version names ViTMAE's layers differently")
    hf.load_state_dict(state, strict=True)
    torch.testing.assert_close(hf.vit.embeddings.position_embeddings, model.encoder.pos_embed)
    torch.testing.assert_close(hf.decoder.decoder_pos_embed, model.decoder.pos_embed)
    pixels = torch.randn(4, 3, 32, 32)
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(2))
    expected = hf(pixel_values=pixels, noise=noise).loss
    # HF keeps the lowest-noise tokens; mimkit masks the highest-scoring ones: same mask.
    from mimkit.pretrain.masking import mask_from_scores

    mask = mask_from_scores(noise, 12)
    pred = model.decode(model.encode(pixels, mask), mask, mask.ids_masked)
    from mimkit.pretrain import gather_tokens

    loss = model.loss(pred, gather_tokens(model.target(pixels), mask.ids_masked))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def hf_state_from_mimkit(model: MAE, hf_state: dict) -> dict | None:
    """Maps mimkit MAE weights onto transformers' ViTMAE names (v5 layout)."""
    ours = {
        **{f"enc.{k}": v for k, v in model.encoder.state_dict().items()},
        **{f"dec.{k}": v for k, v in model.decoder.state_dict().items()},
    }
    ours["dec.pos_embed"] = model.decoder.pos_embed
    out = {
        "vit.embeddings.cls_token": ours["enc.cls_token"],
        "vit.embeddings.position_embeddings": ours["enc.pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": ours["enc.patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": ours["enc.patch_embed.proj.bias"],
        "vit.layernorm.weight": ours["enc.norm.weight"],
        "vit.layernorm.bias": ours["enc.norm.bias"],
        "decoder.decoder_embed.weight": ours["dec.embed.weight"],
        "decoder.decoder_embed.bias": ours["dec.embed.bias"],
        "decoder.mask_token": ours["dec.mask_token"],
        "decoder.decoder_pos_embed": ours["dec.pos_embed"],
        "decoder.decoder_norm.weight": ours["dec.norm.weight"],
        "decoder.decoder_norm.bias": ours["dec.norm.bias"],
        "decoder.decoder_pred.weight": ours["dec.pred.weight"],
        "decoder.decoder_pred.bias": ours["dec.pred.bias"],
    }
    encoder_prefix = (
        "vit.layers" if "vit.layers.0.mlp.fc1.weight" in hf_state else "vit.encoder.layer"
    )
    for hf_prefix, our_prefix, depth in (
        (encoder_prefix, "enc.blocks", 2),
        ("decoder.decoder_layers", "dec.blocks", 2),
    ):
        for i in range(depth):
            h, o = f"{hf_prefix}.{i}", f"{our_prefix}.{i}"
            for kind in ("weight", "bias"):
                q, k, v = ours[f"{o}.attn.qkv.{kind}"].chunk(3)
                out[f"{h}.attention.q_proj.{kind}"] = q
                out[f"{h}.attention.k_proj.{kind}"] = k
                out[f"{h}.attention.v_proj.{kind}"] = v
                out[f"{h}.attention.o_proj.{kind}"] = ours[f"{o}.attn.proj.{kind}"]
                out[f"{h}.layernorm_before.{kind}"] = ours[f"{o}.norm1.{kind}"]
                out[f"{h}.layernorm_after.{kind}"] = ours[f"{o}.norm2.{kind}"]
                out[f"{h}.mlp.fc1.{kind}"] = ours[f"{o}.mlp.fc1.{kind}"]
                out[f"{h}.mlp.fc2.{kind}"] = ours[f"{o}.mlp.fc2.{kind}"]
    if set(out) != set(hf_state):
        return None
    return out


def test_reconstruct_shapes_and_visible_patches_pasted():
    model = tiny_mae().eval()
    pixels = torch.randn(2, 3, 32, 32)
    views = model.reconstruct(pixels, generator=torch.Generator().manual_seed(0))
    assert set(views) == {"original", "masked", "reconstruction"}
    for view in views.values():
        assert view.shape == pixels.shape
    mask = random_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    keep = mask.ids_keep[0, 0].item()
    row, col = divmod(keep, 4)
    region = (0, slice(None), slice(row * 8, row * 8 + 8), slice(col * 8, col * 8 + 8))
    torch.testing.assert_close(views["reconstruction"][region], pixels[region])
    torch.testing.assert_close(views["masked"][region], pixels[region])
    assert views["masked"].eq(0).float().mean() > 0.7


def test_training_reduces_loss():
    model = tiny_mae()
    coarse = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    pixels = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")  # smooth images
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        loss = model.compute_loss({"pixels": pixels}, generator=torch.Generator().manual_seed(0))[
            "loss"
        ]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]


def test_mask_repeats_reuse_each_image_with_different_masks():
    model = tiny_mae()
    model.mask_repeats = 3
    pixels = torch.randn(2, 3, 32, 32)
    seen = {}
    original_encode = model.encode

    def spy(pixels_in, mask):
        seen["pixels"], seen["mask"] = pixels_in, mask
        return original_encode(pixels_in, mask)

    model.encode = spy
    model.train()
    model.compute_loss({"pixels": pixels})
    assert seen["pixels"].shape[0] == 6
    torch.testing.assert_close(seen["pixels"][4], pixels[0])  # repeat r of image i at r*B + i
    masks = seen["mask"].mask
    assert not torch.equal(masks[0], masks[2]) and not torch.equal(masks[0], masks[4])
    assert model.samples_per_input() == 3
    model.eval()
    model.compute_loss({"pixels": pixels})
    assert seen["pixels"].shape[0] == 2  # validation is not repeated
