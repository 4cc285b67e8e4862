"""The hot path compiles into one graph per module: no graph breaks."""

import pytest
import torch
import torch._dynamo
from tiny import quiet_trainer, tiny_encoder
from torch import nn

from mimkit.pretrain import MAE, RandomMasking
from mimkit.pretrain.attention import prepare_attention


def tiny_mae(**kwargs) -> MAE:
    encoder = tiny_encoder(depth=2, **kwargs)
    return MAE(encoder, RandomMasking(0.75), decoder_dim=32, decoder_depth=1, decoder_heads=4)


def test_encoder_and_decoder_have_no_graph_breaks():
    for checkpointing in (False, True):
        model = tiny_mae(grad_checkpointing=checkpointing)
        prepare_attention(model, "cpu")
        pixels = torch.randn(2, 3, 32, 32)
        mask = model.mask(2)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model.encode)(pixels, mask)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1
        latent = model.encode(pixels, mask)
        explained = torch._dynamo.explain(model.decode)(latent, mask, mask.ids_masked)
        assert explained.graph_break_count == 0, explained.break_reasons


def test_whole_loss_has_no_graph_breaks_given_a_mask():
    model = tiny_mae()
    prepare_attention(model, "cpu")
    pixels = torch.randn(2, 3, 32, 32)
    mask = model.mask(2)

    def loss_fn(pixels, mask):
        from mimkit.pretrain import gather_tokens

        pred = model.decode(model.encode(pixels, mask), mask, mask.ids_masked)
        return model.loss(pred, gather_tokens(model.target(pixels), mask.ids_masked))

    torch._dynamo.reset()
    explained = torch._dynamo.explain(loss_fn)(pixels, mask)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_compiled_training_matches_eager(tmp_path):
    """compile_modules=True trains through Lightning and gives the eager losses."""
    from mimkit.data import Synthetic

    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = tiny_mae()
        model.compile_modules = compiled
        recorded = []
        model.compute_loss = _recording(model.compute_loss, recorded)
        trainer = quiet_trainer(tmp_path, max_steps=3)
        torch.manual_seed(1)
        trainer.fit(model, datamodule=Synthetic(img_size=32, batch_size=4, num_samples=12))
        losses[compiled] = recorded
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-3, atol=1e-4)


def _recording(compute_loss, recorded):
    def wrapped(batch, generator=None):
        out = compute_loss(batch, generator)
        recorded.append(out["loss"].detach())
        return out

    return wrapped


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    from mimkit.data import Synthetic

    modes = {}

    def record(module, *args, **kwargs):  # stands in for nn.Module.compile: no compiling
        modes[type(module).__name__] = kwargs

    monkeypatch.setattr(nn.Module, "compile", record)
    model = tiny_mae()
    model.compile_modules, model.compile_mode = True, "max-autotune-no-cudagraphs"
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, datamodule=Synthetic(img_size=32, batch_size=4, num_samples=4))
    expected = {"mode": "max-autotune-no-cudagraphs", "dynamic": False}
    assert modes == {"ViTEncoder": expected, "MAEDecoder": expected}
    with pytest.raises(ValueError, match="compile_mode must be one of default, reduce-overhead"):
        MAE(tiny_encoder(depth=1), compile_mode="max_autotune")
