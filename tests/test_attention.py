import pytest
import torch
from timm.layers import Attention as TimmAttention

from mimkit.pretrain.attention import BackendAttention, xformers_available
from mimkit.pretrain.encoder import ViTEncoder


def _pair(backend_a: str, backend_b: str, **kwargs):
    torch.manual_seed(0)
    source = TimmAttention(64, num_heads=4, qkv_bias=True, **kwargs)
    a = BackendAttention(source, backend_a)
    b = BackendAttention(source, backend_b)  # shares the very same layers
    return a, b


@pytest.mark.parametrize("kwargs", [{}, {"qk_norm": True, "norm_layer": torch.nn.LayerNorm}])
def test_sdpa_matches_math_outputs_and_gradients(kwargs):
    sdpa, math_ = _pair("sdpa", "math", **kwargs)
    x = torch.randn(3, 17, 64, requires_grad=True)
    out_sdpa = sdpa(x)
    grad_sdpa = torch.autograd.grad(out_sdpa.square().sum(), [x, *sdpa.parameters()])
    out_math = math_(x)
    grad_math = torch.autograd.grad(out_math.square().sum(), [x, *math_.parameters()])
    torch.testing.assert_close(out_sdpa, out_math, rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(grad_sdpa, grad_math, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def _bmhk_attention(q, k, v, p=0.0):
    """What ``xformers.ops.memory_efficient_attention`` computes, in its ``(B, M, H, K)``
    layout with its default scale ``1 / sqrt(K)``; written out here for the CPU."""
    assert p == 0.0 and q.dim() == 4
    scores = torch.einsum("bmhk,bnhk->bhmn", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhmn,bnhk->bmhk", scores.softmax(dim=-1), v)


@pytest.mark.parametrize("kwargs", [{}, {"qk_norm": True, "norm_layer": torch.nn.LayerNorm}])
def test_xformers_layout_matches_sdpa(kwargs, monkeypatch):
    """The xformers path hands the kernel (B, N, H, D) tensors straight from qkv; checked on
    the CPU with the kernel's documented semantics standing in for it."""
    from types import SimpleNamespace

    from mimkit.pretrain import attention

    fake_ops = SimpleNamespace(memory_efficient_attention=_bmhk_attention)
    monkeypatch.setattr(attention, "_import_xformers_ops", lambda: fake_ops)
    xformers, sdpa = _pair("xformers", "sdpa", **kwargs)
    xformers._resolved = "xformers"  # _resolve() admits xformers on CUDA tensors only
    x = torch.randn(3, 17, 64, requires_grad=True)
    outputs, grads = [], []
    for module in (xformers, sdpa):
        out = module(x)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [x, *module.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_backend_attention_equals_timm_attention():
    torch.manual_seed(0)
    source = TimmAttention(64, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 9, 64)
    expected = source(x)
    for backend in ("math", "sdpa", "auto"):
        torch.testing.assert_close(BackendAttention(source, backend).eval()(x), expected)


def test_auto_picks_sdpa_on_cpu_and_says_so_once(monkeypatch):
    from mimkit.pretrain import attention

    said = []
    monkeypatch.setattr(attention, "rank_zero_info", said.append)
    monkeypatch.setattr(attention, "_announced", set())
    attn, _ = _pair("auto", "math")
    attn(torch.randn(1, 4, 64))
    attn(torch.randn(1, 4, 64))
    assert attn._resolved == "sdpa"
    assert said == ["attention backend: sdpa (requested auto)"]


def test_explicit_xformers_on_cpu_fails_clearly():
    with pytest.raises(RuntimeError, match="sdpa") as err:
        encoder = ViTEncoder(
            "vit_tiny_patch16_224", img_size=32, patch_size=8, attn_backend="xformers"
        )
        encoder(torch.randn(1, 3, 32, 32))
    assert "xformers" in str(err.value)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="attn_backend"):
        _pair("flash", "math")


@pytest.mark.gpu
@pytest.mark.skipif(not xformers_available(), reason="needs CUDA and xformers")
def test_xformers_matches_sdpa_on_gpu_bf16():
    xf, sdpa = _pair("xformers", "sdpa")
    xf, sdpa = xf.cuda().bfloat16(), sdpa.cuda().bfloat16()
    x = torch.randn(4, 197, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out_xf = xf(x)
    (g_xf,) = torch.autograd.grad(out_xf.float().square().sum(), [x])
    out_sdpa = sdpa(x)
    (g_sdpa,) = torch.autograd.grad(out_sdpa.float().square().sum(), [x])
    torch.testing.assert_close(out_xf, out_sdpa, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(g_xf, g_sdpa, rtol=5e-2, atol=5e-2)
