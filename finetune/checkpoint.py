"""One loader for every encoder checkpoint layout, safe by construction.

Accepted sources:

* mimkit Lightning ``.ckpt`` files (``state_dict`` with ``encoder.*`` keys and a
  ``"mimkit"`` entry describing the encoder);
* safetensors files written by ``mimkit export`` (plus the JSON beside them);
* the official MAE ``.pth`` layout (``{"model": state}``, decoder keys ``decoder_*``
  and ``mask_token`` dropped);
* VideoMAE-style wrappers (``module`` / ``model``) and ``encoder.`` prefixes;
* plain timm state dicts.

A classifier's ``fc_norm.*`` (the LayerNorm after pooling) is kept aside and loaded only
into an encoder built with timm's ``fc_norm=True`` layout (no final token norm, a norm
after pooling): the layout a ``FineTune(pool="avg")`` checkpoint's metadata describes.

Nothing is ever unpickled beyond tensors and plain containers:
``torch.load(..., weights_only=True)`` (which also rebuilds the ``argparse.Namespace`` of
options that the official MAE / VideoMAE scripts save) or safetensors.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from mimkit.pretrain import ViTEncoder
from mimkit.pretrain.pos_embed import sincos_video
from mimkit.pretrain.video_weights import adapt_state_dict

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "LoadResult",
    "RawCheckpoint",
    "build_encoder",
    "encoder_state_dict",
    "load_encoder",
    "load_encoder_state",
    "pooled_norm_config",
    "read_checkpoint",
]

#: Keys that belong to a pretraining decoder or a classifier, not to the encoder.
IGNORED_PATTERNS: tuple[str, ...] = (
    r"^decoder[._]",
    r"^mask_token$",
    r"^head\.",
    r"^fc_norm\.",
    r"^ema\.",
    r"^teacher\.",
    r"^target_encoder\.",
    r"^masking\.",
)
#: Wrapper keys tried, in order, around a state dict.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "module", "model_state", "encoder")
PATCH_KEY = "patch_embed.proj.weight"
#: Prefixes stripped from every key (DDP, torch.compile, wrappers).
STRIP_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.", "backbone.")
#: A classifier's norm after pooling, timm's ``fc_norm`` (at the top level of a method's
#: state dict, or of a timm / exported state dict).
POOLED_NORM = "fc_norm."


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the encoder; the message says why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


@dataclass
class RawCheckpoint:
    """A checkpoint read from disk, before matching it to an encoder.

    Attributes:
        path: where it was read from.
        format: ``mimkit-ckpt``, ``safetensors``, ``mae-pth``, ``wrapped`` or ``state-dict``.
        state: the encoder's tensors with timm key names (prefixes stripped).
        ignored: keys dropped because they belong to a decoder or a head.
        meta: what built the encoder (``encoder`` config, ``timm_name``, ``mean``...), or ``{}``.
        pooled_norm: a classifier's ``fc_norm.*`` tensors (also listed in ``ignored``),
            loaded only into an encoder that has an ``fc_norm`` (timm's ``fc_norm=True``).
    """

    path: Path
    format: str
    state: dict[str, Tensor]
    ignored: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    pooled_norm: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class LoadResult:
    """What loading did, exactly.

    Attributes:
        missing: encoder keys the checkpoint did not provide.
        unexpected: checkpoint keys the encoder has no place for.
        ignored: decoder/head keys dropped on purpose.
        resampled: keys resampled to the encoder's grid (``pos_embed``), or inflated /
            resampled to its tubelet (``patch_embed.proj.weight``).
        format: the checkpoint layout that was recognized.
        fixed: keys the encoder keeps as its own because they are fixed, not learned
            (a sin-cos ``pos_embed`` the checkpoint lacks or has for another grid).
    """

    missing: list[str]
    unexpected: list[str]
    ignored: list[str]
    resampled: list[str]
    format: str
    fixed: list[str] = field(default_factory=list)


def _is_tensor_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(v, Tensor) for v in value.values())
    )


def _torch_load(path: Path) -> Any:
    try:
        # The official MAE / VideoMAE training scripts save their argparse options next to
        # the weights ("args"): a Namespace of plain values, safe to rebuild.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled Python objects other than tensors and "
            "plain containers, and mimkit never unpickles arbitrary objects "
            f"(torch.load weights_only=True said: {first}). Re-save the weights alone, e.g. "
            "torch.save(model.state_dict(), path), or export them as safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint: {err}".splitlines()[0]
        ) from None


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors: {err}") from None
    meta: dict[str, Any] = {}
    if "mimkit" in header:
        meta = json.loads(header["mimkit"])
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        meta = {**meta, **json.loads(sidecar.read_text())}
    return state, meta


def _strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        # a method's state dict (mimkit, VideoMAE): keep the encoder and what it ignores
        state = {
            (k[len("encoder.") :] if k.startswith("encoder.") else f"\0{k}"): v
            for k, v in state.items()
        }
    return state


def _fuse_qkv_bias(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """BEiT/VideoMAE store ``q_bias`` and ``v_bias`` apart (no key bias): fuse into ``qkv.bias``."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".attn.q_bias")]:
        stem = key[: -len("q_bias")]
        v_bias = out.pop(stem + "v_bias", None)
        q_bias = out.pop(key)
        if v_bias is None:
            out[key] = q_bias
            continue
        out[stem + "qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    return out


def pooled_norm_config(config: Mapping[str, Any], pool: str) -> dict[str, Any]:
    """The encoder config of a classifier that normalizes after pooling.

    timm's layout for it: no final norm on the tokens, ``fc_norm`` on the pooled feature
    (``global_pool`` ``avg`` or ``token``). A ``FineTune(pool="avg")`` checkpoint's
    encoder is this (its ``encoder.norm`` is an identity, its ``fc_norm`` follows the
    mean), so rebuilding from this config and loading gives exactly its pooled features.

    Args:
        config: a :class:`~mimkit.pretrain.ViTEncoder` config.
        pool: ``avg`` or ``cls``, the classifier's pooling.
    """
    kwargs = dict(config.get("model_kwargs") or {})
    kwargs.update(global_pool="avg" if pool == "avg" else "token", fc_norm=True)
    return {**config, "model_kwargs": kwargs}


def _upgrade_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata of a ``FineTune(pool="avg")`` checkpoint written before it recorded
    ``pooled_norm_config``: the same description, so that it rebuilds."""
    config = meta.get("encoder")
    if meta.get("method") == "FineTune" and meta.get("pool") == "avg" and config:
        meta["encoder"] = pooled_norm_config(config, "avg")
    return meta


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Reads any supported checkpoint into timm-named encoder tensors.

    Args:
        path: a mimkit ``.ckpt``, an exported ``.safetensors``, an official MAE/VideoMAE
            ``.pth`` or a timm state dict.

    Raises:
        CheckpointNotFoundError: the file does not exist.
        CheckpointError: the file is unreadable, holds arbitrary pickled objects, or holds
            no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"checkpoint {path} does not exist"
            + (" (it is a folder)" if path.is_dir() else "")
            + "; give a mimkit .ckpt, an exported .safetensors, or an MAE/VideoMAE/timm .pth"
        )
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
        fmt = "safetensors"
    else:
        raw = _torch_load(path)
        if not isinstance(raw, Mapping):
            raise CheckpointError(
                f"{path} holds a {type(raw).__name__}, not a dict of tensors or a checkpoint dict"
            )
        if isinstance(raw.get("mimkit"), Mapping):
            meta = dict(raw["mimkit"])
        fmt = "state-dict"
        state_any: Any = raw
        while not _is_tensor_dict(state_any):
            wrapper = next((k for k in WRAPPER_KEYS if isinstance(state_any.get(k), Mapping)), None)
            if wrapper is None:
                raise CheckpointError(
                    f"{path} holds no state dict: top-level keys {sorted(map(str, state_any))[:10]}"
                    f"; expected tensors or one of {list(WRAPPER_KEYS)} holding them"
                )
            if fmt == "state-dict":
                fmt = {"state_dict": "mimkit-ckpt" if meta else "lightning-ckpt"}.get(
                    wrapper, "mae-pth" if wrapper == "model" else "wrapped"
                )
            state_any = state_any[wrapper]
        state = dict(state_any)
    state = _fuse_qkv_bias(_strip(state))
    kept: dict[str, Tensor] = {}
    ignored: list[str] = []
    pooled_norm: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key.lstrip("\0")
        if key.startswith("\0") or any(re.search(p, key) for p in IGNORED_PATTERNS):
            ignored.append(name)
            if name.startswith(POOLED_NORM):
                pooled_norm.setdefault(name, value)
        else:
            kept[key] = value
    if not kept:
        raise CheckpointError(f"{path} holds no encoder weights (only {sorted(ignored)[:8]}...)")
    return RawCheckpoint(
        path=path,
        format=fmt,
        state=kept,
        ignored=sorted(ignored),
        meta=_upgrade_meta(meta),
        pooled_norm=pooled_norm,
    )


def _describe(state: Mapping[str, Tensor]) -> str:
    parts = []
    proj = state.get("patch_embed.proj.weight")
    if proj is not None:
        parts.append(f"embed_dim {proj.shape[0]}")
        parts.append(f"patch {tuple(proj.shape[2:])}")
        parts.append(f"in_chans {proj.shape[1]}")
    depth = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if depth:
        parts.append(f"depth {max(depth) + 1}")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        parts.append(f"mlp {fc1.shape[0]}")
    return ", ".join(parts) or f"{len(state)} tensors"


def _resample_pos_embed(value: Tensor, encoder: ViTEncoder) -> Tensor:
    prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
    old_patches = value.shape[1] - prefix
    side = int(round(old_patches**0.5))
    if side * side != old_patches:
        raise CheckpointError(
            f"cannot resample pos_embed of shape {tuple(value.shape)}: {old_patches} patch "
            "positions do not form a square grid"
        )
    return resample_abs_pos_embed(
        value.float(),
        new_size=list(encoder.grid_size),
        old_size=[side, side],
        num_prefix_tokens=prefix,
    ).to(value.dtype)


def _is_sincos_table(pos: Tensor, grid: tuple[int, ...], encoder: ViTEncoder) -> bool:
    """Whether ``pos`` is the fixed space-time sin-cos table of ``encoder``'s layout at
    ``grid``: a table that was never trained, which a new grid rebuilds instead of
    interpolating (VideoMAE's flat layout is no smooth function of ``(t, h, w)``)."""
    if len(grid) != 3 or pos.shape[-1] != encoder.embed_dim:
        return False
    table = sincos_video(grid, encoder.embed_dim, encoder.video_pos_embed)
    patches = pos[0, pos.shape[1] - table.shape[0] :].float()
    return patches.shape == table.shape and torch.allclose(patches, table, atol=1e-4)


def _source_grid(raw: RawCheckpoint, encoder: ViTEncoder) -> tuple[int, ...] | None:
    """The token grid ``(H, W)`` or ``(T, H, W)`` of the checkpoint's ``pos_embed``.

    Read from the checkpoint's metadata when it has some, else inferred from the table's
    length: a square is an image grid; otherwise the encoder's spatial grid, or its frame
    count, is assumed.
    """
    pos = raw.state.get("pos_embed")
    if pos is None:
        return None
    prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
    tokens = pos.shape[1] - prefix
    config = raw.meta.get("encoder")
    if isinstance(config, Mapping) and config.get("img_size"):
        patch = raw.state[PATCH_KEY].shape[-1] if PATCH_KEY in raw.state else encoder.patch_size
        side = int(config["img_size"]) // patch
        frames = config.get("num_frames")
        grid = (side, side) if not frames else (frames // config.get("tubelet_size", 2), side, side)
        if math.prod(grid) == tokens:
            return grid
    side = math.isqrt(tokens)
    if raw.state.get(PATCH_KEY, torch.empty(0)).ndim != 5 and side * side == tokens:
        return (side, side)
    height, width = encoder.grid_size[-2:]
    if tokens % (height * width) == 0:
        return (tokens // (height * width), height, width)
    time = encoder.grid_size[0]
    side = math.isqrt(tokens // time)
    if tokens % time == 0 and side * side * time == tokens:
        return (time, side, side)
    raise CheckpointError(
        f"cannot tell the token grid of {raw.path}'s pos_embed ({tokens} positions) to resample "
        f"it to the encoder's {tuple(encoder.grid_size)}"
    )


def _to_video(
    raw: RawCheckpoint, encoder: ViTEncoder
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Image or video weights for a video encoder: the tubelet and the position table adapted.

    Returns:
        The state, the keys inflated or resampled, and the keys replaced by the encoder's
        own fixed table (a sin-cos ``pos_embed`` whose source grid cannot be told).
    """
    state = dict(raw.state)
    weight = state.get(PATCH_KEY)
    target_weight = encoder.patch_embed.proj.weight
    if weight is not None and (
        weight.ndim not in (4, 5) or weight.shape[:2] != target_weight.shape[:2]
    ):
        return state, [], []  # another width or channel count: reported as a mismatch
    pos = state.pop("pos_embed", None)
    same = pos is not None and pos.shape == encoder.pos_embed.shape
    grid = None
    if pos is not None and not same:
        fixed_table = not encoder.pos_embed.requires_grad
        try:
            grid = _source_grid(raw, encoder)
        except CheckpointError:
            if not fixed_table:
                raise
        state["pos_embed"] = pos
        if grid is not None and fixed_table and _is_sincos_table(pos, grid, encoder):
            grid = None  # the source's own fixed table: rebuilt for the new grid, as VideoMAE
    adapted = adapt_state_dict(state, encoder, grid)
    changed = [PATCH_KEY] if weight is not None and adapted[PATCH_KEY].shape != weight.shape else []
    fixed: list[str] = []
    if same:
        adapted["pos_embed"] = pos
    elif pos is not None:
        (changed if grid is not None else fixed).append("pos_embed")
    return adapted, changed, fixed


def encoder_state_dict(
    raw: RawCheckpoint, encoder: ViTEncoder
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Matches a checkpoint's tensors to ``encoder``: resamples ``pos_embed``, checks shapes.

    Returns:
        The state to load, the keys that were resampled, and the keys taken from the
        encoder's own fixed tables.

    Raises:
        CheckpointError: a tensor's shape differs for a reason other than the image size,
            i.e. the checkpoint is for a different architecture.
    """
    target = encoder.state_dict()
    state = dict(raw.state)
    resampled: list[str] = []
    fixed: list[str] = []
    weight = state.get(PATCH_KEY)
    if not encoder.is_video and weight is not None and weight.ndim == 5:
        raise CheckpointError(
            f"checkpoint {raw.path} holds a video encoder (tubelet kernel "
            f"{tuple(weight.shape[2:])}) but the encoder is an image one; build a video "
            f"encoder (model.num_frames, or num_frames in the encoder's init_args)"
        )
    if encoder.is_video:
        state, resampled, fixed = _to_video(raw, encoder)
    if "pos_embed" in target and "pos_embed" not in state and not encoder.pos_embed.requires_grad:
        state["pos_embed"] = target["pos_embed"]  # a fixed table is not always saved (VideoMAE)
        fixed.append("pos_embed")
    for key, value in raw.pooled_norm.items():  # only an encoder with an fc_norm takes it
        if key in target and key not in state:
            state[key] = value
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape:
        if pos.shape[-1] == target["pos_embed"].shape[-1]:
            state["pos_embed"] = _resample_pos_embed(pos, encoder)
            resampled.append("pos_embed")
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs encoder {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {raw.path} is for a different architecture than the encoder "
            f"{encoder.timm_name!r}: checkpoint has {_describe(raw.state)}; encoder has "
            f"{_describe(target)}. {len(mismatched)} tensors differ, first: {mismatched[0]}"
        )
    return state, resampled, fixed


def load_encoder_state(
    encoder: ViTEncoder, source: str | Path | RawCheckpoint, strict: bool = True
) -> LoadResult:
    """Loads a checkpoint's encoder weights into ``encoder`` (in place).

    Args:
        encoder: the encoder to fill.
        source: a checkpoint path or an already read :class:`RawCheckpoint`.
        strict: fail on any missing or unexpected key. When ``False`` they are only
            returned, but missing ``patch_embed`` / ``blocks`` weights still fail.

    Returns:
        The exact missing / unexpected / ignored / resampled keys.

    Raises:
        CheckpointError: unreadable file, different architecture, or missing keys.
    """
    raw = source if isinstance(source, RawCheckpoint) else read_checkpoint(source)
    state, resampled, fixed = encoder_state_dict(raw, encoder)
    target = encoder.state_dict()
    missing = sorted(k for k in target if k not in state)
    unexpected = sorted(k for k in state if k not in target)
    critical = [k for k in missing if k.startswith(("patch_embed.", "blocks."))]
    if critical or (strict and (missing or unexpected)):
        details = []
        if missing:
            details.append(f"missing {len(missing)}: {missing[:12]}")
        if unexpected:
            details.append(f"unexpected {len(unexpected)}: {unexpected[:12]}")
        if "norm.weight" in missing and raw.pooled_norm:
            details.append(
                "the checkpoint is a classifier that normalizes after pooling (fc_norm.*, no "
                "final token norm, e.g. FineTune(pool='avg')): leave the encoder out to rebuild "
                "it from the checkpoint, or give it model_kwargs {global_pool: avg, fc_norm: true}"
            )
        raise CheckpointError(
            f"checkpoint {raw.path} ({raw.format}; {_describe(raw.state)}) does not match the "
            f"encoder {encoder.timm_name!r} ({_describe(target)}): " + "; ".join(details)
        )
    encoder.load_state_dict(state, strict=False)
    return LoadResult(
        missing=missing,
        unexpected=unexpected,
        ignored=[k for k in raw.ignored if k not in target or k not in state],
        resampled=resampled,
        format=raw.format,
        fixed=fixed,
    )


def build_encoder(meta: Mapping[str, Any], path: Path | str = "", **overrides: Any) -> ViTEncoder:
    """Rebuilds the :class:`ViTEncoder` a checkpoint's ``"mimkit"`` metadata describes.

    Args:
        meta: the checkpoint's metadata (needs ``"encoder"``: the encoder's ``config``).
        path: the checkpoint, for error messages.
        **overrides: ViTEncoder arguments replacing the stored ones (``img_size``,
            ``drop_path_rate``, ``attn_backend``...). ``None`` values are ignored.
    """
    config = meta.get("encoder")
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"checkpoint {path} does not describe its encoder (no mimkit metadata); "
            "give the encoder explicitly: class_path mimkit.pretrain.ViTEncoder and the timm "
            "name, as --model.encoder for fit/validate/test, --encoder for mimkit knn"
        )
    kwargs = dict(config)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return ViTEncoder(**kwargs)


def load_encoder(
    path: str | Path,
    encoder: ViTEncoder | None = None,
    strict: bool = True,
    **overrides: Any,
) -> tuple[ViTEncoder, LoadResult]:
    """Loads a checkpoint into ``encoder``, or into the encoder the checkpoint describes.

    Args:
        path: any supported checkpoint.
        encoder: the encoder to fill; ``None`` rebuilds it from the checkpoint's metadata
            (mimkit ``.ckpt`` or exported safetensors + JSON).
        strict: see :func:`load_encoder_state`.
        **overrides: ViTEncoder arguments when rebuilding (``img_size`` resamples the
            position embedding, ``drop_path_rate``, ``attn_backend``...).

    Returns:
        The encoder and the exact load report.
    """
    raw = read_checkpoint(path)
    if encoder is None:
        encoder = build_encoder(raw.meta, raw.path, **overrides)
    elif any(v is not None for v in overrides.values()):
        raise ValueError(f"encoder overrides {overrides} only apply when rebuilding the encoder")
    return encoder, load_encoder_state(encoder, raw, strict=strict)
