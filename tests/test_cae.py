"""CAE's loss against an explicit per-sample computation; targets, alignment and checkpoints."""

import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from timm.layers import DropPath
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.data import Synthetic
from mimkit.pretrain import CAE, BlockMasking, PixelTarget, TokenizerTarget, ViTEncoder

P = 8  # patch size; 32 px images -> a 4 x 4 grid


def tiny_encoder(depth: int = 1) -> ViTEncoder:
    return ViTEncoder(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=P,
        attn_backend="sdpa",
        model_kwargs={"depth": depth},
    )


def tiny_cae(**kwargs) -> CAE:
    torch.manual_seed(0)
    defaults = dict(masking=BlockMasking(0.5), regressor_depth=2, decoder_depth=1)
    defaults.update(kwargs)
    return CAE(tiny_encoder(), **defaults)


def explicit_attention(block, q_in, k_in, v_in):
    """Multi-head attention written out: softmax(q k^T / sqrt(d)) v per head."""
    attn, heads = block.attn, block.attn.num_heads
    q = q_in @ attn.q.weight.T + attn.q.bias
    k = k_in @ attn.k.weight.T
    v = v_in @ attn.v.weight.T + attn.v.bias
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[:, part] @ k[:, part].T / math.sqrt(d), dim=-1)
        outs.append(weights @ v[:, part])
    return torch.cat(outs, dim=-1) @ attn.proj.weight.T + attn.proj.bias


def reference_loss(model: CAE, pixels: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Per-sample loops over timm's own ViT and Blocks with copied weights."""
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=P, depth=1
    )
    vit.load_state_dict(model.encoder.state_dict())
    dec_blocks = []
    for block in model.decoder.blocks:
        ref = Block(
            192, 3, qkv_bias=True, init_values=0.1, norm_layer=partial(nn.LayerNorm, eps=1e-6)
        )
        ref.load_state_dict(block.state_dict())
        dec_blocks.append(ref)
    pos = model.pos_embed[0]  # (16, D) sin-cos positions
    rec_total, align_total = 0.0, 0.0
    for b in range(pixels.shape[0]):
        image = pixels[b : b + 1]
        visible = [i for i in range(16) if not masked[b, i]]
        hidden = [i for i in range(16) if masked[b, i]]

        def encode(ids, image=image):
            tokens = vit.patch_embed(image)[0] + vit.pos_embed[0, 1:]
            x = torch.cat([vit.cls_token[0] + vit.pos_embed[0, :1], tokens[ids]])[None]
            for block in vit.blocks:
                x = block(x)
            return vit.norm(x)[0, 1:]

        latent_visible = encode(visible)
        with torch.no_grad():
            latent_hidden = encode(hidden)
        x = model.mask_token[0].expand(len(hidden), -1)
        for block in model.regressor.blocks:
            kv = torch.cat([latent_visible, x])
            pos_kv = torch.cat([pos[visible], pos[hidden]])
            attended = explicit_attention(
                block, block.norm_q(x + pos[hidden]), block.norm_k(kv + pos_kv), block.norm_v(kv)
            )
            x = block.norm_mid(x + block.ls1.gamma * attended)
            x = x + block.ls2.gamma * block.mlp(x)
        predicted = model.regressor.norm(x)
        y = (predicted + pos[hidden])[None]
        for block in dec_blocks:
            y = block(y)
        pred = model.decoder.head(model.decoder.norm(y))[0]
        for j, i in enumerate(hidden):
            row, col = divmod(i, 4)
            patch = image[0, :, row * P : (row + 1) * P, col * P : (col + 1) * P]
            target = patch.permute(1, 2, 0).reshape(-1)
            mean, var = target.mean(), target.var(unbiased=True)
            target = (target - mean) / torch.sqrt(var + 1e-6)
            rec_total = rec_total + ((pred[j] - target) ** 2).mean() / len(hidden)
        align_total = align_total + ((predicted - latent_hidden) ** 2).mean()
    batch = pixels.shape[0]
    return rec_total / batch + 2.0 * align_total / batch


def test_loss_equals_independent_reference():
    model = tiny_cae()
    pixels = torch.randn(3, 3, 32, 32)
    out = model.compute_loss({"pixels": pixels}, generator=torch.Generator().manual_seed(3))
    mask = model.mask(3, torch.Generator().manual_seed(3))
    assert int(mask.mask.sum(1)[0]) == 8  # block-wise, 50%
    expected = reference_loss(model, pixels, mask.mask)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss_rec"] + 2.0 * out["loss_align"], out["loss"].detach())


def test_alignment_target_has_no_gradient_and_ema_option():
    model = tiny_cae()
    pixels = torch.randn(2, 3, 32, 32)
    mask = model.mask(2)
    assert not model.align_target(pixels, mask).requires_grad
    assert model.momentum_pairs() == []
    ema = tiny_cae(alignment_encoder="ema")
    assert [t for _, t in ema.momentum_pairs()] == [ema.alignment_encoder]
    ema.compute_loss({"pixels": pixels})["loss"].backward()
    assert all(p.grad is None for p in ema.alignment_encoder.parameters())
    assert ema.encoder.blocks[0].attn.qkv.weight.grad is not None
    # The EMA copy is not trained by the optimizer and not exported as the encoder.
    names = {n for n, _ in ema.named_trainable_parameters()}
    assert not any(n.startswith("alignment_encoder.") for n in names)


def test_loss_goes_down():
    model = tiny_cae()
    pixels = torch.randn(4, 3, 32, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(8):
        loss = model.compute_loss({"pixels": pixels}, torch.Generator().manual_seed(step))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def drop_rate(module: nn.Module) -> float:
    """A block's stochastic depth rate: ``DropPath.drop_prob``, 0 for ``Identity``."""
    assert isinstance(module, (DropPath, nn.Identity))
    return module.drop_prob if isinstance(module, DropPath) else 0.0


def test_regressor_and_decoder_get_linear_drop_path():
    """As the official code: each of regressor and decoder ramps ``linspace(0, rate, depth)``."""
    model = tiny_cae(
        regressor_depth=4, decoder_depth=3, regressor_drop_path_rate=0.1, decoder_drop_path_rate=0.2
    )
    regressor = [drop_rate(block.drop_path) for block in model.regressor.blocks]
    attn = [drop_rate(block.drop_path1) for block in model.decoder.blocks]
    mlp = [drop_rate(block.drop_path2) for block in model.decoder.blocks]
    assert regressor == pytest.approx(torch.linspace(0, 0.1, 4).tolist())
    assert attn == mlp == pytest.approx(torch.linspace(0, 0.2, 3).tolist())
    assert isinstance(model.regressor.blocks[0].drop_path, nn.Identity)  # rate 0: no module


def test_zero_drop_path_leaves_the_model_unchanged():
    """Rate 0 (the default) adds no DropPath; weights never depend on the rate."""
    pixels = torch.randn(8, 3, 32, 32)

    def loss(model: CAE, train: bool) -> torch.Tensor:
        model.train(train)
        torch.manual_seed(1)  # DropPath draws from the global generator
        return model.compute_loss({"pixels": pixels}, torch.Generator().manual_seed(2))["loss"]

    plain = tiny_cae()
    dropped = tiny_cae(regressor_drop_path_rate=0.9, decoder_drop_path_rate=0.9)
    assert not any(isinstance(m, DropPath) for m in plain.modules())
    state, dropped_state = plain.state_dict(), dropped.state_dict()
    assert state.keys() == dropped_state.keys()
    assert all(torch.equal(state[k], dropped_state[k]) for k in state)
    torch.testing.assert_close(loss(plain, True), loss(plain, False), rtol=0, atol=0)
    torch.testing.assert_close(loss(dropped, False), loss(plain, False), rtol=0, atol=0)
    assert not torch.allclose(loss(dropped, True), loss(plain, True))


def test_imagenet_recipe_drops_paths_in_regressor_and_decoder_like_the_encoder():
    recipe = Path(__file__).parents[1] / "recipes/pretrain/cae_vit_base_patch16_in1k.yaml"
    args = yaml.safe_load(recipe.read_text())["model"]["init_args"]
    encoder_rate = args["encoder"]["init_args"]["drop_path_rate"]
    assert encoder_rate == args["regressor_drop_path_rate"] == args["decoder_drop_path_rate"] == 0.1


class TinyTokenizer(nn.Module):
    """A stand-in discrete tokenizer: one of 16 codes per 8 x 8 patch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel_size=P, stride=P)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv(pixels).argmax(dim=1)  # (B, 4, 4) long


class NearTieTokenizer(nn.Module):
    """Two codes whose scores differ by 2**-12 relative: equal once weights are bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=P, stride=P, bias=False)
        with torch.no_grad():
            self.conv.weight[0].fill_(0.5)
            self.conv.weight[1].fill_(0.5 * (1 + 2**-12))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv(pixels)  # (B, 2, 4, 4) scores; code 1 wins in float32


def test_tokenizer_codes_are_float32_under_bf16_autocast(tmp_path):
    path = tmp_path / "tokenizer.pt"
    torch.jit.script(NearTieTokenizer()).save(str(path))
    target = TokenizerTarget(path, vocab_size=2)
    pixels = torch.rand(2, 3, 32, 32) + 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = target(pixels, P)
    assert torch.equal(codes, torch.ones(2, 16, dtype=torch.long))


def test_tokenizer_target_loads_torchscript_and_gives_cross_entropy(tmp_path):
    torch.manual_seed(0)
    tokenizer = TinyTokenizer()
    path = tmp_path / "tokenizer.pt"
    torch.jit.script(tokenizer).save(str(path))
    target = TokenizerTarget(path, vocab_size=16)
    pixels = torch.randn(2, 3, 32, 32)
    codes = target(pixels, P)
    torch.testing.assert_close(codes, tokenizer(pixels).flatten(1))

    model = tiny_cae(target=target)
    assert model.decoder.head.out_features == 16
    out = model.compute_loss({"pixels": pixels}, generator=torch.Generator().manual_seed(1))
    mask = model.mask(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.decode(model.regress(model.encode(pixels, mask), mask), mask)
    expected = torch.stack(
        [
            -torch.log_softmax(logits[b, j], dim=-1)[codes[b, i]]
            for b in range(2)
            for j, i in enumerate(mask.ids_masked[b].tolist())
        ]
    ).mean()
    torch.testing.assert_close(out["loss_rec"], expected)
    assert not any("tokenizer" in key for key in model.state_dict())  # never saved
    with pytest.raises(FileNotFoundError):
        TokenizerTarget(tmp_path / "missing.pt")


def test_pixel_target_and_reconstruction_pictures():
    assert PixelTarget().out_dim(P, 3) == P * P * 3
    model = tiny_cae().eval()
    pixels = torch.randn(2, 3, 32, 32)
    views = model.reconstruct(pixels, torch.Generator().manual_seed(0))
    mask = model.mask(2, torch.Generator().manual_seed(0)).mask.view(2, 1, 4, 1, 4, 1)
    visible = (~mask).expand(2, 3, 4, P, 4, P).reshape(2, 3, 32, 32)
    torch.testing.assert_close(views["reconstruction"][visible], pixels[visible])
    assert not torch.allclose(views["reconstruction"][~visible], pixels[~visible])


def test_checkpoint_has_mae_style_metadata_and_timm_encoder(tmp_path):
    model = tiny_cae()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, Synthetic(img_size=32, batch_size=4, num_samples=8, num_val_samples=0))
    trainer.save_checkpoint(tmp_path / "cae.ckpt")
    ckpt = torch.load(tmp_path / "cae.ckpt", map_location="cpu", weights_only=True)
    meta = ckpt["mimkit"]
    assert meta["method"] == "CAE" and meta["timm_name"] == "vit_tiny_patch16_224"
    assert meta["encoder"]["patch_size"] == P and len(meta["mean"]) == 3
    encoder = {
        k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")
    }
    vit = timm.create_model(meta["timm_name"], num_classes=0, **meta["timm_kwargs"])
    vit.load_state_dict(encoder, strict=True)
    assert F.mse_loss(vit.pos_embed, model.encoder.pos_embed) == 0


def test_tokenizer_target_from_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kwargs = {"in_channels": 3, "out_channels": 16, "kernel_size": P, "stride": P}
    conv = nn.Conv2d(**kwargs)
    save_file(conv.state_dict(), str(tmp_path / "tok.safetensors"))
    target = TokenizerTarget(
        tmp_path / "tok.safetensors", vocab_size=16, module="torch.nn.Conv2d", module_kwargs=kwargs
    )
    pixels = torch.randn(2, 3, 32, 32)
    # A float output is read as per-code logits (B, vocab, h, w).
    torch.testing.assert_close(target(pixels, P), conv(pixels).argmax(1).flatten(1))
    with pytest.raises(ValueError, match="class path"):
        TokenizerTarget(tmp_path / "tok.safetensors", vocab_size=16)
    with pytest.raises(ValueError, match="outside"):
        TokenizerTarget(
            tmp_path / "tok.safetensors",
            vocab_size=8,
            module="torch.nn.Conv2d",
            module_kwargs=kwargs,
        )(pixels, P)
