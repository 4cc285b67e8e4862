"""``mimkit export``: an encoder as timm-named safetensors plus the JSON that rebuilds it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from .checkpoint import CheckpointError, build_encoder, load_encoder_state, read_checkpoint

__all__ = ["export_encoder"]

FORMAT = "mimkit-encoder"
FORMAT_VERSION = 1


def export_encoder(checkpoint: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Writes a checkpoint's encoder as ``out`` (safetensors) and ``out`` with ``.json``.

    The tensors keep timm's key names, so
    ``timm.create_model(timm_name, num_classes=0, **timm_kwargs).load_state_dict(...)``
    takes them with ``strict=True``. The JSON holds ``timm_name``, ``timm_kwargs``, the
    normalization ``mean`` / ``std`` of the pretraining data, and mimkit's encoder config.
    The same JSON is also stored in the safetensors header under ``"mimkit"``.
    A video encoder (tubelet embedding) has no timm counterpart: its JSON says
    ``"timm_loadable": false``, and :func:`~mimkit.finetune.load_encoder` rebuilds it.

    Args:
        checkpoint: any checkpoint :func:`~mimkit.finetune.read_checkpoint` accepts that
            describes its encoder (a mimkit ``.ckpt`` or an earlier export).
        out: the ``.safetensors`` file to write.

    Returns:
        The safetensors and JSON paths.
    """
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise ValueError(f"export target {out} must end in .safetensors")
    raw = read_checkpoint(checkpoint)
    encoder = build_encoder(raw.meta, raw.path, init="timm")
    load_encoder_state(encoder, raw, strict=True)
    config = dict(encoder.config)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "timm_name": encoder.timm_name,
        "timm_kwargs": dict(encoder.timm_kwargs),
        "mean": raw.meta.get("mean"),
        "std": raw.meta.get("std"),
        "num_prefix_tokens": encoder.num_prefix_tokens,
        "embed_dim": encoder.embed_dim,
        "timm_loadable": not encoder.is_video,
        "method": raw.meta.get("method"),
        "encoder": config,
        "source": str(raw.path),
    }
    if meta["mean"] is None or meta["std"] is None:
        raise CheckpointError(
            f"checkpoint {raw.path} does not record the normalization mean/std of its data"
        )
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"mimkit": json.dumps(meta)})
    out.chmod(_default_file_mode())  # safetensors writes 0600; readable like the JSON beside it
    sidecar = out.with_suffix(".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return out, sidecar


def _default_file_mode() -> int:
    """The mode a newly created file gets under the process umask (``0o666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
