"""Image-to-video inflation, tubelet / grid resampling and the official VideoMAE layout."""

import torch

from mimkit.pretrain.encoder import ViTEncoder
from mimkit.pretrain.pos_embed import sincos_3d
from mimkit.pretrain.video_weights import (
    adapt_state_dict,
    from_official_videomae,
    inflate_patch_embed,
    resample_tubelet,
    resample_video_pos_embed,
)

TINY = dict(img_size=32, patch_size=8, attn_backend="math", model_kwargs={"depth": 1})


def test_inflated_image_encoder_embeds_a_static_clip_like_its_frame():
    image = ViTEncoder("vit_tiny_patch16_224", **TINY).eval()
    video = ViTEncoder("vit_tiny_patch16_224", num_frames=4, tubelet_size=2, **TINY).eval()
    state = adapt_state_dict(image.state_dict(), video)
    video.load_state_dict(state, strict=True)
    frame = torch.randn(2, 3, 32, 32)
    clip = frame.unsqueeze(2).expand(-1, -1, 4, -1, -1)  # the same frame 4 times
    tokens = video.embed_tubelets(clip).view(2, 2, 16, -1)
    expected = image.patch_embed(frame)
    torch.testing.assert_close(tokens[:, 0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[:, 1], expected, atol=1e-5, rtol=1e-5)
    center = inflate_patch_embed(image.patch_embed.proj.weight, 3, "center")
    assert center[:, :, 1].equal(image.patch_embed.proj.weight) and center[:, :, 0].abs().sum() == 0


def test_resample_tubelet_keeps_static_clip_embedding():
    weight = torch.randn(8, 3, 2, 8, 8)
    single = resample_tubelet(weight, 1, 8)
    assert single.shape == (8, 3, 1, 8, 8)
    torch.testing.assert_close(single[:, :, 0], weight.sum(2))  # a static clip sums over t
    wider = resample_tubelet(weight, 4, 8)
    torch.testing.assert_close(wider.sum(2), weight.sum(2), atol=1e-5, rtol=1e-5)
    assert resample_tubelet(weight, 2, 4).shape == (8, 3, 2, 4, 4)


def test_resample_video_pos_embed():
    table = sincos_3d((2, 4, 4), 64).unsqueeze(0)
    prefixed = torch.cat([torch.ones(1, 1, 64), table], dim=1)
    same = resample_video_pos_embed(prefixed, (2, 4, 4), (2, 4, 4), 1)
    assert same.equal(prefixed)
    more = resample_video_pos_embed(prefixed, (2, 4, 4), (4, 4, 4), 1)
    assert more.shape == (1, 1 + 64, 64) and more[0, 0].eq(1).all()
    grid = more[0, 1:].view(4, 4, 4, 64)
    # half-pixel trilinear: the outer new time steps fall on the old end steps
    torch.testing.assert_close(grid[0], table[0].view(2, 4, 4, 64)[0])
    torch.testing.assert_close(grid[3], table[0].view(2, 4, 4, 64)[1])


def test_learned_pos_embed_from_an_image_is_repeated_over_time():
    image = ViTEncoder("vit_tiny_patch16_224", sincos_pos_embed=False, **TINY)
    video = ViTEncoder("vit_tiny_patch16_224", num_frames=4, sincos_pos_embed=False, **TINY)
    state = adapt_state_dict(image.state_dict(), video, source_grid=(4, 4))
    pos = state["pos_embed"]
    assert pos.shape == video.pos_embed.shape
    torch.testing.assert_close(pos[0, 1:17], image.pos_embed[0, 1:])
    torch.testing.assert_close(pos[0, 17:33], image.pos_embed[0, 1:])
    video.load_state_dict(state, strict=True)


def official_videomae_layout():
    """A VideoMAE-style encoder (no class token, mean pooling, no key bias) and its weights
    in the official checkpoint's key layout (split q/v biases, no sinusoid table)."""
    kwargs = dict(TINY, model_kwargs={"depth": 2, "class_token": False, "global_pool": "avg"})
    ours = ViTEncoder("vit_tiny_patch16_224", num_frames=4, video_pos_embed="videomae", **kwargs)
    with torch.no_grad():
        for block in ours.blocks:  # VideoMAE has no key bias
            block.attn.qkv.bias[192:384] = 0
    official = {}
    for key, value in ours.state_dict().items():
        if key.endswith("attn.qkv.bias"):
            base = key[: -len("qkv.bias")]
            official["encoder." + base + "q_bias"] = value[:192]
            official["encoder." + base + "v_bias"] = value[384:]
        elif key != "pos_embed":  # VideoMAE's sinusoid table is not saved
            official["encoder." + key] = value
    return ours, official, kwargs


def test_official_videomae_layout_loads():
    ours, official, kwargs = official_videomae_layout()
    official["decoder.norm.weight"] = torch.ones(3)
    official["mask_token"] = torch.zeros(1, 1, 3)
    fresh = ViTEncoder("vit_tiny_patch16_224", num_frames=4, video_pos_embed="videomae", **kwargs)
    missing, unexpected = fresh.load_state_dict(from_official_videomae(official), strict=False)
    assert missing == ["pos_embed"] and not unexpected
    clip = torch.randn(2, 3, 4, 32, 32)
    torch.testing.assert_close(fresh.eval()(clip), ours.eval()(clip))
