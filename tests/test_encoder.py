import pytest
import timm
import torch

from mimkit.pretrain.encoder import ViTEncoder, gather_tokens
from mimkit.pretrain.patches import normalize_patches, patchify, unpatchify
from mimkit.pretrain.pos_embed import sincos_2d

TINY = {"img_size": 32, "patch_size": 8}


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_tiny_patch16_224", {}),
        ("vit_small_patch16_224", {}),
        ("vit_base_patch16_224", {"model_kwargs": {"depth": 2}}),
        ("vit_tiny_patch16_224", {"model_kwargs": {"reg_tokens": 2, "no_embed_class": True}}),
        # other timm families: layer scale, register tokens with average pooling, attention
        # pooling, pre-norm, parallel blocks, a distillation token
        ("deit3_small_patch16_224", {"model_kwargs": {"depth": 2}}),
        ("vit_little_patch16_reg4_gap_256", {"model_kwargs": {"depth": 2}}),
        ("vit_base_patch16_siglip_224", {"model_kwargs": {"depth": 2}}),
        ("vit_base_patch16_clip_224", {"model_kwargs": {"depth": 2}}),
        ("vit_small_patch16_18x2_224", {"model_kwargs": {"depth": 2}}),
        ("deit_tiny_distilled_patch16_224", {}),
    ],
)
def test_state_dict_loads_strictly_into_timm(name, kwargs):
    encoder = ViTEncoder(name, **TINY, **kwargs).eval()
    timm_kwargs = dict(TINY, **kwargs.get("model_kwargs", {}))
    reference = timm.create_model(name, num_classes=0, **timm_kwargs).eval()
    reference.load_state_dict(encoder.state_dict(), strict=True)
    encoder.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(encoder(x), reference.forward_features(x))


def test_visible_tokens_equal_per_sample_gather():
    encoder = ViTEncoder(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, attn_backend="math"
    ).eval()
    x = torch.randn(3, 3, 32, 32)
    ids_keep = torch.stack([torch.randperm(64)[:16].sort().values for _ in range(3)])
    batched = encoder(x, ids_keep)
    assert batched.shape == (3, 17, 192)
    for b in range(3):  # one sample at a time, selecting tokens by plain indexing
        tokens = encoder.embed_patches(x[b : b + 1])[:, ids_keep[b]]
        tokens = torch.cat([encoder.prefix_tokens(1), tokens], dim=1)
        torch.testing.assert_close(
            batched[b : b + 1], encoder.forward_blocks(tokens), atol=1e-5, rtol=1e-5
        )


def test_sincos_pos_embed_is_fixed_and_matches_formula():
    encoder = ViTEncoder("vit_tiny_patch16_224", img_size=32, patch_size=8)
    pos = encoder.pos_embed
    assert not pos.requires_grad
    assert torch.count_nonzero(pos[0, 0]) == 0  # class token position
    dim = encoder.embed_dim
    # token (row=1, col=2) of the 4x4 grid: first half encodes the column, second the row
    token = pos[0, 1 + 1 * 4 + 2]
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    expected = torch.cat(
        [torch.sin(2 * omega), torch.cos(2 * omega), torch.sin(1 * omega), torch.cos(1 * omega)]
    ).float()
    torch.testing.assert_close(token, expected)
    assert sincos_2d((4, 4), dim).shape == (16, dim)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = ViTEncoder("vit_tiny_patch16_224", **TINY)
    ckpt = ViTEncoder("vit_tiny_patch16_224", **TINY, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[0, 5, 9, 15], [1, 2, 3, 4]])
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model(x, ids).square().mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_non_vit_model_is_rejected():
    with pytest.raises(TypeError, match="VisionTransformer"):
        ViTEncoder("resnet18", img_size=32)


@pytest.mark.parametrize(
    "name,kwargs,error,match",
    [
        (
            "vit_tiny_patch16_224",
            {"img_size": 60},
            ValueError,
            "not a multiple of the patch size 16",
        ),
        ("vit_small_patch14_dinov2", {"img_size": 64}, ValueError, "use e.g. 56 or 70"),
        ("vit_base_mci_224", {"img_size": 64}, TypeError, "would see pixels of masked patches"),
        ("vit_base_r50_s16_224", {"img_size": 64}, TypeError, "HybridEmbed"),
        ("vit_intern300m_patch14_448", {"img_size": 56}, ValueError, "'dynamic_img_size': False"),
    ],
)
def test_encoders_masked_pretraining_cannot_use_are_rejected(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        ViTEncoder(name, **kwargs)


def test_patchify_roundtrip_and_layout():
    images = torch.randn(2, 3, 16, 24)
    patches = patchify(images, 8)
    assert patches.shape == (2, 6, 8 * 8 * 3)
    # patch 4 is row 1, col 1; its first value is pixel (8, 8), channel-last layout
    torch.testing.assert_close(patches[:, 4, :3], images[:, :, 8, 8])
    torch.testing.assert_close(unpatchify(patches, 8, (2, 3)), images)
    normed, mean, std = normalize_patches(patches)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(std.squeeze(-1) ** 2, patches.var(-1) + 1e-6)


def test_gather_tokens():
    tokens = torch.arange(24.0).view(2, 4, 3)
    out = gather_tokens(tokens, torch.tensor([[3, 0], [1, 1]]))
    assert torch.equal(out[0, 0], tokens[0, 3]) and torch.equal(out[1, 1], tokens[1, 1])
