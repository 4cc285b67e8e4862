"""Video encoder, space-time positions, video masking and the VideoMAE losses."""

import math
from functools import partial

import pytest
import timm
import torch
from timm.models.vision_transformer import Block
from tiny import HF_TINY_MAE_SIZES

from mimkit.pretrain import masking
from mimkit.pretrain.encoder import ViTEncoder
from mimkit.pretrain.masking import (
    RandomMasking,
    RunningCellMasking,
    TubeMasking,
    dual_mask_queries,
    running_cell_mask,
    tube_mask,
)
from mimkit.pretrain.pos_embed import sincos_3d, sincos_separable, sincos_videomae
from mimkit.pretrain.videomae import VideoMAE, patchify_video, unpatchify_video

T, S, P, TUBE = 4, 32, 8, 2  # 4 frames of 32x32, 8x8 patches, tubelets of 2: 2x4x4 = 32 tokens


def video_encoder(**kwargs) -> ViTEncoder:
    args = dict(img_size=S, patch_size=P, num_frames=T, tubelet_size=TUBE, attn_backend="math")
    args.update(kwargs)
    args.setdefault("model_kwargs", {"depth": 2})
    return ViTEncoder("vit_tiny_patch16_224", **args)


def omega(dim: int) -> torch.Tensor:
    return 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))


def sc(pos: float, dim: int) -> torch.Tensor:
    return torch.cat([torch.sin(pos * omega(dim)), torch.cos(pos * omega(dim))])


# ----- encoder and positions ---------------------------------------------------------


def test_tubelet_embedding_is_a_linear_map_of_each_tube():
    encoder = video_encoder().eval()
    weight = encoder.state_dict()["patch_embed.proj.weight"]
    assert weight.shape == (192, 3, TUBE, P, P)  # the official VideoMAE layout
    assert encoder.grid_size == (2, 4, 4) and encoder.num_patches == 32
    video = torch.randn(2, 3, T, S, S)
    tokens = encoder.embed_tubelets(video)
    assert tokens.shape == (2, 32, 192)
    # token (t=1, h=2, w=3) by hand: the tube's pixels times the kernel, plus bias
    tube = video[:, :, 2:4, 16:24, 24:32]
    expected = torch.einsum("bctij,dctij->bd", tube, weight) + encoder.patch_embed.proj.bias
    torch.testing.assert_close(tokens[:, 1 * 16 + 2 * 4 + 3], expected, atol=1e-5, rtol=1e-5)
    out = encoder(video, torch.arange(5).expand(2, -1))
    assert out.shape == (2, 1 + 5, 192)
    with pytest.raises(ValueError, match="expects"):
        encoder(torch.randn(2, 3, S, S))


def test_video_blocks_keep_timm_names():
    encoder = video_encoder(model_kwargs={"depth": 1, "class_token": False, "global_pool": "avg"})
    # without a class token the final norm stays on the tokens (timm's fc_norm off)
    assert encoder.timm_kwargs["fc_norm"] is False and isinstance(encoder.norm, torch.nn.LayerNorm)
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=S, patch_size=P, depth=1,
        class_token=False, global_pool="avg", fc_norm=False,
    )  # fmt: skip
    video_only = {"patch_embed.proj.weight", "pos_embed"}
    assert set(encoder.state_dict()) == set(vit.state_dict())
    missing, unexpected = vit.load_state_dict(
        {k: v for k, v in encoder.state_dict().items() if k not in video_only}, strict=False
    )
    assert set(missing) == video_only and not unexpected
    assert encoder.num_prefix_tokens == 0 and encoder.pos_embed.shape == (1, 32, 192)


def test_space_time_sincos_formulas():
    dim = 64
    joint = sincos_3d((2, 4, 4), dim)
    ds = 2 * (3 * dim // 16)  # 24 channels for columns, 24 for rows, 16 for time
    token = joint[1 * 16 + 2 * 4 + 3]  # t=1, h=2, w=3
    torch.testing.assert_close(
        token, torch.cat([sc(3, ds), sc(2, ds), sc(1, dim - 2 * ds)]).float()
    )
    sep = sincos_separable((2, 4, 4), dim)
    half = dim // 2
    spatial = torch.cat([sc(3, half), sc(2, half)])  # MAE 2D: columns then rows
    torch.testing.assert_close(token * 0 + sep[1 * 16 + 2 * 4 + 3], (spatial + sc(1, dim)).float())
    vmae = sincos_videomae(32, dim)
    n, i = 27, torch.arange(dim // 2, dtype=torch.float64)
    angle = n / 10000 ** (2 * i / dim)
    torch.testing.assert_close(vmae[n, 0::2], angle.sin().float())
    torch.testing.assert_close(vmae[n, 1::2], angle.cos().float())
    encoder = video_encoder(video_pos_embed="separable")
    assert not encoder.pos_embed.requires_grad
    assert torch.count_nonzero(encoder.pos_embed[0, 0]) == 0  # class token position
    torch.testing.assert_close(encoder.pos_embed[0, 1:], sincos_separable((2, 4, 4), 192))


def test_patchify_video_roundtrip_and_order():
    video = torch.randn(2, 3, T, S, S)
    patches = patchify_video(video, P, TUBE)
    assert patches.shape == (2, 32, TUBE * P * P * 3)
    torch.testing.assert_close(unpatchify_video(patches, P, TUBE, (2, 4, 4)), video)
    tube = video[0, :, 2:4, 8:16, 0:8].permute(1, 2, 3, 0).reshape(-1)  # (t, p, p, C)
    torch.testing.assert_close(patches[0, 1 * 16 + 1 * 4 + 0], tube)


# ----- masking -----------------------------------------------------------------------


def test_tube_mask_repeats_one_spatial_mask_over_time():
    gen = torch.Generator().manual_seed(0)
    mask = tube_mask(8, (4, 7, 7), 0.9, generator=gen)
    per_frame = int(0.9 * 49)  # VideoMAE's count: 44 masked, 5 visible per frame
    assert TubeMasking(0.9).num_visible((8, 14, 14)) == 8 * 20  # 176 of 196 masked per frame
    assert mask.ids_masked.shape == (8, 4 * per_frame)
    grid = mask.mask.view(8, 4, 49)
    assert (grid == grid[:, :1]).all()
    assert (grid.sum(-1) == per_frame).all()
    assert TubeMasking(0.9).num_visible((4, 7, 7)) == mask.num_keep
    again = tube_mask(8, (4, 7, 7), 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask.mask, again.mask)
    assert len({tuple(r.tolist()) for r in mask.ids_keep}) == 8


def test_tube_mask_keeps_tubes_whole_when_noise_ties_at_the_cutoff(monkeypatch):
    def tied_noise(*size, device=None, generator=None):
        # positions 1 and 2 tie for the second of two masked places per frame
        return torch.tensor([0.9, 0.5, 0.5, 0.1], device=device).expand(*size).clone()

    monkeypatch.setattr(masking.torch, "rand", tied_noise)
    mask = tube_mask(3, (6, 2, 2), 0.5)
    grid = mask.mask.view(3, 6, 4)
    assert (grid == grid[:, :1]).all()
    assert (grid.sum(-1) == 2).all() and grid[:, :, 0].all() and not grid[:, :, 3].any()
    assert mask.num_masked == 6 * 2 and mask.num_keep == 6 * 2
    for b in range(3):
        assert mask.ids_masked[b].tolist() == torch.nonzero(mask.mask[b]).flatten().tolist()
        assert mask.ids_keep[b].tolist() == torch.nonzero(~mask.mask[b]).flatten().tolist()
    tokens = torch.arange(24).expand(3, -1)
    ordered = torch.cat([tokens.gather(1, mask.ids_keep), tokens.gather(1, mask.ids_masked)], 1)
    assert torch.equal(ordered.gather(1, mask.ids_restore), tokens)


def test_space_time_random_mask_is_not_a_tube():
    mask = RandomMasking(0.9)(16, (4, 7, 7), generator=torch.Generator().manual_seed(0))
    assert mask.num_masked == 196 - int(196 * 0.1)
    grid = mask.mask.view(16, 4, 49)
    assert not (grid == grid[:, :1]).all()


def test_running_cell_mask_pattern():
    mask = running_cell_mask(6, (8, 4, 6), 0.5, 2, generator=torch.Generator().manual_seed(1))
    assert (mask.mask.sum(1) == 8 * 24 // 2).all()
    hidden = mask.mask.view(6, 8, 2, 2, 3, 2).permute(0, 1, 2, 4, 3, 5).reshape(6, 8, 6, 4)
    assert (hidden.sum(-1) == 2).all()  # every 2x2 cell: 2 of 4 visible in every frame
    visible = ~hidden
    for start in range(8 - 3):  # each position visible in 2 of any 4 consecutive frames
        assert (visible[:, start : start + 4].sum(1) == 2).all()
    assert not torch.equal(visible[:, 0], visible[:, 1])  # the cell runs over time
    assert torch.equal(
        mask.mask,
        RunningCellMasking(0.5)(6, (8, 4, 6), generator=torch.Generator().manual_seed(1)).mask,
    )


def test_dual_mask_queries_are_the_decoder_visible_tokens_scored_where_encoder_masked():
    gen = torch.Generator().manual_seed(0)
    enc = tube_mask(32, (4, 6, 6), 0.75, generator=gen)
    dec = running_cell_mask(32, (4, 6, 6), 0.5, generator=gen)
    ids, scored = dual_mask_queries(enc, dec)
    assert ids.shape == scored.shape == (32, 4 * 36 // 2)
    assert (ids.diff(dim=1) > 0).all()
    for b in range(32):
        assert set(ids[b].tolist()) == set(torch.nonzero(~dec.mask[b]).flatten().tolist())
        assert scored[b].tolist() == enc.mask[b, ids[b]].tolist()
    # a tube mask visible in all 4 steps meets a running cell visible in 2 of 4: half the
    # encoder-visible positions are decoded but not scored, in every sample
    assert ((~scored).sum(dim=1) == enc.num_keep // 2).all()


# ----- VideoMAE ----------------------------------------------------------------------


def tiny_videomae(**kwargs) -> VideoMAE:
    torch.manual_seed(0)
    enc_kwargs = kwargs.pop("encoder", {})
    return VideoMAE(
        video_encoder(**enc_kwargs),
        kwargs.pop("masking", TubeMasking(0.75)),
        decoder_dim=32,
        decoder_depth=2,
        decoder_heads=4,
        **kwargs,
    )


def reference_loss(model: VideoMAE, video, ids_keep, ids_query, full_decoder: bool, scored=None):
    """Per-sample loop over plain timm modules and explicit formulas.

    The tube embedding is an einsum over sliced tubes; encoder and decoder blocks are
    timm's own, with copied weights; the target is normalized per tube and channel by hand.
    """
    enc, dec = model.encoder, model.decoder
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=S, patch_size=P, depth=2
    )
    state = {
        k: v
        for k, v in enc.state_dict().items()
        if k not in ("patch_embed.proj.weight", "pos_embed")
    }
    vit.load_state_dict(state, strict=False)
    blocks = []
    for block in dec.blocks:
        ref = Block(32, 4, 4.0, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        ref.load_state_dict(block.state_dict())
        blocks.append(ref)
    weight, bias = enc.patch_embed.proj.weight, enc.patch_embed.proj.bias
    pos, dpos = enc.pos_embed[0], dec.pos_embed[0]
    n = 32

    def tube(b, i):
        t, rest = divmod(i, 16)
        h, w = divmod(rest, 4)
        return video[b, :, t * TUBE : (t + 1) * TUBE, h * P : (h + 1) * P, w * P : (w + 1) * P]

    losses = []
    for b in range(video.shape[0]):
        keep = ids_keep[b].tolist()
        tokens = [
            torch.einsum("ctij,dctij->d", tube(b, i), weight) + bias + pos[1 + i] for i in keep
        ]
        x = torch.stack([vit.cls_token[0, 0] + pos[0], *tokens])[None]
        for block in vit.blocks:
            x = block(x)
        latent = dec.embed(vit.norm(x))[0]
        query = ids_query[b].tolist()
        if full_decoder:
            slots = {i: latent[1 + j] for j, i in enumerate(keep)}
            order = list(range(n))
            seq = [slots.get(i, dec.mask_token[0, 0]) + dpos[1 + i] for i in order]
        else:
            order = keep + query
            seq = [latent[1 + j] + dpos[1 + i] for j, i in enumerate(keep)]
            seq += [dec.mask_token[0, 0] + dpos[1 + i] for i in query]
        y = torch.stack([latent[0] + dpos[0], *seq])[None]
        for block in blocks:
            y = block(y)
        pred = dec.pred(dec.norm(y))[0, 1:]
        for k, i in enumerate(query):
            if scored is not None and not scored[b, k]:
                continue  # decoded but not scored (dual masking, the encoder saw it)
            x_t = tube(b, i).permute(1, 2, 3, 0).reshape(-1, 3)  # (t*p*p, C)
            mean = x_t.mean(0)
            std = torch.sqrt(((x_t - mean) ** 2).sum(0) / (x_t.shape[0] - 1)) + 1e-6
            target = ((x_t - mean) / std).reshape(-1)
            losses.append(((pred[order.index(i)] - target) ** 2).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("dual", [False, True])
def test_videomae_loss_matches_independent_computation(dual):
    kwargs = {"decoder_masking": RunningCellMasking(0.5)} if dual else {}
    model = tiny_videomae(**kwargs).eval()
    video = torch.randn(3, 3, T, S, S)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    loss = model.compute_loss({"pixels": video}, generator=gen())["loss"]
    g = gen()
    mask = model.mask(3, g)
    ids_query, scored = model.decoder_queries(mask, g)
    expected_k = T // TUBE * 16 // 2 if dual else mask.num_masked
    assert ids_query.shape == (3, expected_k)
    assert (scored is None) != dual and (not dual or not scored.all())
    with torch.no_grad():
        ref = reference_loss(
            model, video, mask.ids_keep, ids_query, full_decoder=not dual, scored=scored
        )
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)


def hf_videomae_state(model: VideoMAE, hf_state: dict) -> dict | None:
    """mimkit VideoMAE weights under transformers' ``VideoMAEForPreTraining`` names.

    transformers (like the official code) has no key bias: timm's key bias only adds a
    constant to each query's logits, which the softmax ignores, so it is dropped.
    """
    ours = model.state_dict()
    out = {
        "mask_token": ours["decoder.mask_token"],
        "encoder_to_decoder.weight": ours["decoder.embed.weight"],
        "videomae.embeddings.patch_embeddings.projection.weight": ours[
            "encoder.patch_embed.proj.weight"
        ],
        "videomae.embeddings.patch_embeddings.projection.bias": ours[
            "encoder.patch_embed.proj.bias"
        ],
        "videomae.layernorm.weight": ours["encoder.norm.weight"],
        "videomae.layernorm.bias": ours["encoder.norm.bias"],
        "decoder.norm.weight": ours["decoder.norm.weight"],
        "decoder.norm.bias": ours["decoder.norm.bias"],
        "decoder.head.weight": ours["decoder.pred.weight"],
        "decoder.head.bias": ours["decoder.pred.bias"],
    }
    out |= hf_videomae_layers(
        ours, "videomae.encoder.layer", "encoder.blocks", len(model.encoder.blocks)
    )
    out |= hf_videomae_layers(
        ours, "decoder.decoder_layers", "decoder.blocks", len(model.decoder.blocks)
    )
    return out if set(out) == set(hf_state) else None


def hf_videomae_layers(ours: dict, hf_prefix: str, our_prefix: str, depth: int) -> dict:
    """timm blocks ``{our_prefix}.i`` under transformers' VideoMAE layer names, key bias
    dropped (it only shifts each query's logits, which the softmax ignores)."""
    out = {}
    for i in range(depth):
        h, o = f"{hf_prefix}.{i}", f"{our_prefix}.{i}"
        q, k, v = ours[f"{o}.attn.qkv.weight"].chunk(3)
        q_bias, _, v_bias = ours[f"{o}.attn.qkv.bias"].chunk(3)
        out[f"{h}.attention.attention.query.weight"] = q
        out[f"{h}.attention.attention.query.bias"] = q_bias
        out[f"{h}.attention.attention.key.weight"] = k
        out[f"{h}.attention.attention.value.weight"] = v
        out[f"{h}.attention.attention.value.bias"] = v_bias
        for kind in ("weight", "bias"):
            out[f"{h}.attention.output.dense.{kind}"] = ours[f"{o}.attn.proj.{kind}"]
            out[f"{h}.layernorm_before.{kind}"] = ours[f"{o}.norm1.{kind}"]
            out[f"{h}.layernorm_after.{kind}"] = ours[f"{o}.norm2.{kind}"]
            out[f"{h}.intermediate.dense.{kind}"] = ours[f"{o}.mlp.fc1.{kind}"]
            out[f"{h}.output.dense.{kind}"] = ours[f"{o}.mlp.fc2.{kind}"]
    return out


def test_videomae_matches_transformers_with_copied_weights():
    """The whole objective against transformers' port of the official VideoMAE.

    Same weights and tube mask: tubelet embedding, VideoMAE's 1D sinusoid tables in
    encoder and decoder, the encoder's final norm (pretraining encoder), the decoder on
    visible latents plus mask tokens, and the per-tube, per-channel normalized target.
    """
    transformers = pytest.importorskip("transformers")
    model = tiny_videomae(
        encoder={
            "video_pos_embed": "videomae",
            "model_kwargs": {"depth": 2, "class_token": False, "global_pool": "avg"},
        },
        masking=TubeMasking(0.75),
    ).eval()
    assert model.decoder.embed.bias is None  # VideoMAE's encoder_to_decoder has none
    config = transformers.VideoMAEConfig(
        image_size=S,
        patch_size=P,
        num_frames=T,
        tubelet_size=TUBE,
        use_mean_pooling=False,  # the pretraining encoder ends with its norm
        **HF_TINY_MAE_SIZES,
    )
    hf = transformers.VideoMAEForPreTraining(config).eval()
    state = hf_videomae_state(model, hf.state_dict())
    if state is None:
        pytest.skip("this transformers version names VideoMAE's layers differently")
    hf.load_state_dict(state, strict=True)
    torch.testing.assert_close(
        hf.videomae.embeddings.position_embeddings.float(), model.encoder.pos_embed
    )
    torch.testing.assert_close(hf.position_embeddings.float(), model.decoder.pos_embed)

    video = torch.randn(3, 3, T, S, S)
    mask = model.mask(3, torch.Generator().manual_seed(4))
    with torch.no_grad():
        loss = model.loss(
            model.decode(model.encode(video, mask), mask, mask.ids_masked),
            model.target(video, mask.ids_masked),
        )
        # transformers takes (B, T, C, H, W) clips normalized with ImageNet's mean and std,
        # and un-normalizes them for the target; per-channel normalization cancels that.
        expected = hf(pixel_values=video.transpose(1, 2), bool_masked_pos=mask.mask).loss
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_dual_masking_loss_covers_exactly_the_decoder_targets():
    model = tiny_videomae(decoder_masking=RunningCellMasking(0.5)).eval()
    video = torch.randn(2, 3, T, S, S)
    g = torch.Generator().manual_seed(7)
    mask = model.mask(2, g)
    ids_query, scored = model.decoder_queries(mask, g)
    skipped = [i for i in mask.ids_masked[0].tolist() if i not in ids_query[0].tolist()]
    assert skipped, "some masked tokens are left out by the decoder mask"

    def loss_with(token):
        changed = video.clone()
        if token is not None:
            t, rest = divmod(token, 16)
            h, w = divmod(rest, 4)
            changed[0, :, t * 2 : t * 2 + 2, h * 8 : h * 8 + 8, w * 8 : w * 8 + 8].normal_()
        gen = torch.Generator().manual_seed(7)
        return model.compute_loss({"pixels": changed}, generator=gen)["loss"]

    base = loss_with(None)
    assert loss_with(skipped[0]) == base  # a masked tube outside the subset: no effect
    assert loss_with(int(ids_query[0][scored[0]][0])) != base  # a scored tube: counted


def test_mae_st_options_and_reconstruction():
    model = tiny_videomae(
        masking=RandomMasking(0.9),
        norm_per_channel=False,
        encoder={"video_pos_embed": "separable"},
    )
    assert model.encoder.num_prefix_tokens == 1  # class token, as MAE-ST's cls_embed
    video = torch.randn(2, 3, T, S, S)
    out = model.compute_loss({"pixels": video})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    views = model.reconstruct(video, generator=torch.Generator().manual_seed(0))
    assert views["reconstruction"].shape == video.shape
    mask = model.mask(2, torch.Generator().manual_seed(0))
    visible = ~mask.mask.view(2, 2, 4, 4)
    # visible tubes are pasted from the input, masked tubes are zero in "masked"
    t, h, w = [int(v) for v in visible[0].nonzero()[0]]
    sl = (0, slice(None), slice(2 * t, 2 * t + 2), slice(8 * h, 8 * h + 8), slice(8 * w, 8 * w + 8))
    torch.testing.assert_close(views["reconstruction"][sl], video[sl])
    t, h, w = [int(v) for v in (~visible[0]).nonzero()[0]]
    sl = (0, slice(None), slice(2 * t, 2 * t + 2), slice(8 * h, 8 * h + 8), slice(8 * w, 8 * w + 8))
    assert views["masked"][sl].abs().sum() == 0


def test_videomae_loss_goes_down():
    model = tiny_videomae(encoder={"model_kwargs": {"depth": 1}}, norm_pix_loss=False)
    coords = torch.arange(S, dtype=torch.float32)
    phase = torch.rand(4, 1, 1, 1, 1, generator=torch.Generator().manual_seed(0)) * 6.28
    frames = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1)
    grating = torch.sin(0.4 * coords.view(1, 1, 1, S, 1) + 0.2 * coords + 0.5 * frames + phase)
    video = grating.expand(4, 3, T, S, S).contiguous()  # moving gratings: predictable tubes
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(12):
        loss = model.compute_loss({"pixels": video}, torch.Generator().manual_seed(step % 3))[
            "loss"
        ]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.fsum(losses[-3:]) / 3 < 0.9 * math.fsum(losses[:3]) / 3, losses


def test_mae_st_pred_frames_regress_one_linspace_frame_per_token():
    model = tiny_videomae(masking=RandomMasking(0.75), norm_per_channel=False, pred_frames=2)
    assert model.pred_tubelet == 1 and model.decoder.pred.out_features == P * P * 3
    video = torch.randn(2, 3, T, S, S)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    loss = model.compute_loss({"pixels": video}, generator=gen())["loss"]
    mask = model.mask(2, gen())
    with torch.no_grad():
        pred = model.decode(model.encode(video, mask), mask, mask.ids_masked)
    errors = []
    for b in range(2):
        for k, i in enumerate(mask.ids_masked[b].tolist()):
            t, rest = divmod(i, 16)
            h, w = divmod(rest, 4)
            frame = (0, 3)[
                t
            ]  # linspace(0, 3, 2) = 0, 3: the first frame of tube 0, the last of tube 1
            x = video[b, :, frame, h * P : (h + 1) * P, w * P : (w + 1) * P].permute(1, 2, 0)
            x = x.reshape(-1)
            target = (x - x.mean()) / (x.var() + 1e-6).sqrt()
            errors.append(((pred[b, k] - target) ** 2).mean())
    torch.testing.assert_close(loss, torch.stack(errors).mean(), atol=1e-5, rtol=1e-5)
    views = model.reconstruct(video, generator=gen())
    assert views["reconstruction"].shape == video.shape
    with pytest.raises(ValueError, match="whole number of regressed frames"):
        tiny_videomae(pred_frames=3)


def test_videomae_init_follows_videomaes_code_and_mae_st_keeps_maes():
    """VideoMAE leaves its tubelet convolution and encoder_to_decoder at PyTorch's default
    init (uniform within 1/sqrt(fan_in)) and cuts its mask token at one std; MAE-ST uses
    MAE's xavier init and a plain normal mask token."""

    def encoder():
        return video_encoder(model_kwargs={"depth": 1, "embed_dim": 384, "num_heads": 6})

    torch.manual_seed(0)
    videomae = VideoMAE(encoder(), decoder_dim=512, decoder_depth=1, decoder_heads=8)
    torch.manual_seed(0)
    mae_st = VideoMAE(encoder(), decoder_dim=512, decoder_depth=1, decoder_heads=8, init="mae")
    for model, default in ((videomae, True), (mae_st, False)):
        proj, embed = model.encoder.patch_embed.proj.weight, model.decoder.embed.weight
        fan_in = proj[0].numel()
        default_bound, xavier_bound = fan_in**-0.5, (6 / (fan_in + proj.shape[0])) ** 0.5
        assert float(proj.abs().max()) <= (default_bound if default else xavier_bound)
        assert (float(proj.abs().max()) > default_bound) == (not default)
        assert (float(embed.abs().max()) <= 384**-0.5) == default
        token = model.decoder.mask_token
        assert (float(token.abs().max()) <= 0.02) == default
    # a normal cut at +-1 std keeps 54% of its spread
    assert 0.45 < float(videomae.decoder.mask_token.std()) / 0.02 < 0.65
    assert 0.85 < float(mae_st.decoder.mask_token.std()) / 0.02 < 1.15
    with pytest.raises(ValueError, match="init must be"):
        VideoMAE(encoder(), init="timm")
