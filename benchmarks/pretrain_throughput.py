"""MAE pretraining throughput, memory and MFU, against transformers' ViTMAE.

One training step is ``model.compute_loss({"pixels": x})["loss"]``, ``backward()``,
a fused AdamW step (mimkit's optimizer, and transformers' Trainer default) and
``zero_grad(set_to_none=True)``, on a
fixed random batch (no data loading). For each (model, precision, batch) group,
every variant (mimkit per attention backend, eager and ``torch.compile``-d, and
transformers' ``ViTMAEForPreTraining`` eager and compiled) is built, warmed up,
then timed in interleaved rounds (variant order rotated every round), so that
background load on a shared machine hits all of them alike. The median round
gives the step time.

FLOPs per step are counted once per model with ``torch.utils.flop_counter``
(forward plus backward of a float32 step at a small batch, scaled linearly to
the benchmark batch; matmuls, linears, convolutions; attention is counted through
its explicit matmuls, i.e. mimkit's ``math`` backend and transformers' ``eager``
attention, because the counter has no formula for the CPU SDPA kernels). The
optimizer step is not counted. MFU is achieved FLOP/s over a stated peak: a
table of dense datasheet peaks on CUDA, a matmul rate measured in the same run
on the CPU.

Examples::

    python benchmarks/pretrain_throughput.py --device cpu --models vit_base_patch16_224 \\
        --batch-size 8 --precisions fp32 bf16 --compile --warmup 2 --steps 5
    python benchmarks/pretrain_throughput.py --device cuda --models B L --batch-size 256 128 \\
        --precisions bf16 --backends sdpa xformers --compile --warmup 5 --steps 20
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from results_file import write_results
from torch import nn

ALIASES = {
    "S": "vit_small_patch16_224",
    "B": "vit_base_patch16_224",
    "L": "vit_large_patch16_224",
    "H": "vit_huge_patch14_224",
}

# Dense (no sparsity) datasheet peaks in TFLOP/s: (bf16 tensor core, fp32 non-tensor).
# Matched by substring of torch.cuda.get_device_name(), first hit wins.
CUDA_PEAKS: list[tuple[str, float, float]] = [
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),  # SXM / HBM3
    ("H200", 989.0, 67.0),
    ("H800", 989.0, 67.0),
    ("GH200", 989.0, 67.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.0, 82.6),
    ("RTX 3090", 71.0, 35.6),
    ("V100", 125.0, 15.7),  # fp16 tensor (no bf16)
    ("T4", 65.0, 8.1),  # fp16 tensor (no bf16)
]


# ----------------------------------------------------------------------------- utils


def resolve_model(name: str) -> str:
    return ALIASES.get(name, ALIASES.get(name.upper(), name))


def short(name: str) -> str:
    for key, value in ALIASES.items():
        if value == name:
            return f"ViT-{key}"
    return name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Parameters, buffers, gradients and optimizer state held between steps."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


class RssProbe:
    """Peak resident set size of this process during a region (Linux).

    Resets the kernel's RSS high-water mark (``/proc/self/clear_refs``, value 5)
    before the region and reads ``VmHWM`` after it. Where that is not possible it
    falls back to ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a high-water mark
    over the process lifetime that cannot be reset (the delta is then a lower bound).
    """

    def __init__(self) -> None:
        self.resettable = self._reset()

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def _reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return self._status("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> int:
        if self.resettable:
            self._reset()
            return self._status("VmRSS") or 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak(self) -> int:
        if self.resettable:
            return self._status("VmHWM") or 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------- models


def build_mimkit(name: str, backend: str) -> nn.Module:
    from mimkit.pretrain import MAE, RandomMasking, ViTEncoder

    encoder = ViTEncoder(name, img_size=224, attn_backend=backend)
    return MAE(
        encoder,
        RandomMasking(0.75),
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=16,
        norm_pix_loss=True,
    )


def encoder_shape(name: str) -> dict[str, int]:
    import timm

    vit = timm.create_model(name, pretrained=False, num_classes=0)
    block = vit.blocks[0]
    shape = {
        "hidden_size": vit.embed_dim,
        "num_hidden_layers": len(vit.blocks),
        "num_attention_heads": block.attn.num_heads,
        "intermediate_size": block.mlp.fc1.out_features,
        "patch_size": vit.patch_embed.patch_size[0],
    }
    del vit
    return shape


def build_hf(name: str, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    shape = encoder_shape(name)
    config = ViTMAEConfig(
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        intermediate_size=shape["intermediate_size"],
        image_size=224,
        patch_size=shape["patch_size"],
        num_channels=3,
        qkv_bias=True,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=2048,
        mask_ratio=0.75,
        norm_pix_loss=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = attn_implementation
    model = ViTMAEForPreTraining(config)
    return model


def mimkit_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.compute_loss({"pixels": x})["loss"]


def hf_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).loss


def set_mimkit_backend(model: nn.Module, backend: str) -> None:
    from mimkit.pretrain.attention import use_backend

    model.encoder.set_attn_backend(backend)
    use_backend(model.decoder.blocks, backend)


def count_flops(loss_fn: Callable, model: nn.Module, device: torch.device, batch: int) -> int:
    """Forward + backward FLOPs of one float32 step at ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, 224, 224, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = loss_fn(model, x)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def flops_per_sample(kind: str, name: str, device: torch.device) -> int:
    """Counts at batch 1 (every op here is per-sample, so FLOPs scale with the batch)."""
    torch.manual_seed(0)
    if kind == "mimkit":
        model = build_mimkit(name, "math").to(device)
        fn = mimkit_loss
    else:
        model = build_hf(name, "eager").to(device)
        fn = hf_loss
    flops = count_flops(fn, model, device, 1)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return flops


# ----------------------------------------------------------------------------- peaks


def cuda_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp32 in CUDA_PEAKS:
        if key in name:
            value = bf16 if precision == "bf16" else fp32
            kind = "dense bf16 tensor core" if precision == "bf16" else "fp32 non-tensor"
            return value, f"{name}: {kind} datasheet peak {value:g} TFLOP/s (table entry '{key}')"
    return None, f"{name}: no peak in the table; MFU not reported"


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, reps: int) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12


# ----------------------------------------------------------------------------- variants


@dataclass
class Variant:
    kind: str  # "mimkit" or "hf"
    backend: str
    compiled: bool
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    loss_fn: Callable | None = None
    round_times: list[float] = field(default_factory=list)  # seconds per step, per round
    peak_bytes: int = 0
    resident: int = 0
    error: str | None = None
    last_loss: torch.Tensor | None = None
    guard: Any = None  # NonfiniteGuard for --nonfinite-check device, made on first use

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.backend}/{'compile' if self.compiled else 'eager'}"


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    from mimkit.pretrain.base import weight_decay_groups

    groups = weight_decay_groups(model.named_parameters())
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)


def build_variant(
    v: Variant, name: str, device: torch.device, compile_mode: str, scope: str = "modules"
) -> None:
    torch.manual_seed(0)
    if v.kind == "mimkit":
        model = build_mimkit(name, v.backend)
        v.loss_fn = mimkit_loss
    else:
        model = build_hf(name, "sdpa")
        v.loss_fn = hf_loss
    model = model.to(device).train()
    if v.compiled and scope == "loss":  # masking, patchify, both models and the loss: one graph
        v.loss_fn = torch.compile(v.loss_fn, mode=compile_mode, dynamic=False)
    elif v.compiled:
        if v.kind == "mimkit":
            model.encoder.compile(mode=compile_mode)
            model.decoder.compile(mode=compile_mode)
        else:
            model.vit.compile(mode=compile_mode)
            model.decoder.compile(mode=compile_mode)
    v.model = model
    v.optimizer = make_optimizer(model)


def train_step(
    v: Variant, x: torch.Tensor, amp: torch.dtype | None, device: torch.device, nonfinite: str
) -> None:
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss = v.loss_fn(v.model, x)
    device_check = nonfinite == "device" and v.kind == "mimkit"
    if nonfinite == "host" and v.kind == "mimkit":
        bool(torch.isfinite(loss.detach()).all())  # PretrainModule's nonfinite_check="host"
    elif device_check:
        if v.guard is None:
            from mimkit.pretrain.nonfinite import NonfiniteGuard

            v.guard = NonfiniteGuard(device)
        v.guard.observe_loss(loss)
    loss.backward()
    if device_check:
        v.guard.before_step(v.optimizer)
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)
    v.last_loss = loss.detach()


def free_variant(v: Variant) -> None:
    v.model = v.optimizer = v.loss_fn = v.last_loss = v.guard = None
    gc.collect()


def run_group(
    name: str,
    precision: str,
    batch: int,
    variants: list[Variant],
    device: torch.device,
    args: argparse.Namespace,
    matmul_probe: Callable[[], None] | None = None,
) -> None:
    """Builds, warms up and times all variants of one (model, precision, batch) group.

    ``matmul_probe`` (CPU) is called once per round, so that the reference matmul
    rate is sampled under the same background load as the models.
    """
    amp = torch.bfloat16 if precision == "bf16" else None
    x = torch.randn(batch, 3, 224, 224, device=device)
    probe = RssProbe() if device.type == "cpu" else None
    live: list[Variant] = []
    for v in variants:
        t0 = time.perf_counter()
        try:
            build_variant(v, name, device, args.compile_mode, args.compile_scope)
            for _ in range(args.warmup):
                train_step(v, x, amp, device, args.nonfinite_check)
            sync(device)
            live.append(v)
        except Exception as err:  # OOM, missing kernel, compile failure: report, go on
            v.error = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            free_variant(v)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        log(
            f"  built+warmed {v.label} in {time.perf_counter() - t0:.1f}s"
            + (f" [{v.error}]" if v.error else "")
        )
    for v in live:
        v.resident = resident_bytes(v.model, v.optimizer)
    total_resident = sum(v.resident for v in live)

    rounds = max(1, math.ceil(args.steps / args.round_steps))
    for r in range(rounds):
        if matmul_probe is not None:
            matmul_probe()
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for v in order:
            if v.error:
                continue
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    start_mem = 0
                else:
                    start_mem = probe.start()
                sync(device)
                t0 = time.perf_counter()
                for _ in range(args.round_steps):
                    train_step(v, x, amp, device, args.nonfinite_check)
                sync(device)
                v.round_times.append((time.perf_counter() - t0) / args.round_steps)
                if device.type == "cuda":
                    # the others' parameters and optimizer state are resident too: take them out
                    others = total_resident - v.resident
                    peak = torch.cuda.max_memory_allocated(device) - others
                else:
                    # growth of the RSS high-water mark during the round, plus own resident state
                    peak = probe.peak() - start_mem + v.resident
                v.peak_bytes = max(v.peak_bytes, peak)
                if not bool(torch.isfinite(v.last_loss)):
                    v.error = "non-finite loss"
            except Exception as err:
                v.error = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        log(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{v.label} {1e3 * v.round_times[-1]:.1f}ms" for v in live if v.round_times)
        )
    for v in variants:
        free_variant(v)
    del x
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- main


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Model aliases: S, B, L, H for vit_{small,base,large}_patch16_224 / vit_huge_patch14_224.",
    )
    p.add_argument("--models", nargs="+", default=["vit_base_patch16_224"])
    p.add_argument(
        "--batch-size",
        nargs="+",
        type=int,
        default=None,
        help="one batch size for all models, or one per model (default: 8 on cpu, 256 on cuda)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=["sdpa"],
        choices=["sdpa", "math", "xformers"],
        help="mimkit attention backends; xformers is skipped unless it imports and CUDA is used",
    )
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile-d variants (mimkit encoder+decoder, HF vit+decoder)",
    )
    p.add_argument("--compile-only", action="store_true", help="time compiled variants only")
    p.add_argument("--compile-mode", default="default")
    p.add_argument(
        "--compile-scope",
        choices=["modules", "loss"],
        default="modules",
        help="compile the encoder and decoder (as compile_modules does), or the whole loss "
        "function in one graph (an experiment: with DDP, one backward graph cannot overlap "
        "its all-reduce)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    p.add_argument(
        "--round-steps",
        type=int,
        default=None,
        help="consecutive steps of one variant per timing round (default 1 on cpu, 5 on cuda)",
    )
    p.add_argument("--json", default=None, help="output path (default benchmarks/results/...)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers' ViTMAEForPreTraining")
    p.add_argument(
        "--nonfinite-check",
        choices=("none", "host", "device"),
        default="none",
        help="add PretrainModule's non-finite step check to mimkit's step: the per-step "
        "host sync ('host') or the on-device flag fed to the fused optimizer ('device')",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    args.steps = args.steps if args.steps is not None else (20 if cuda else 5)
    args.round_steps = args.round_steps or (5 if cuda else 1)
    args.round_steps = min(args.round_steps, args.steps)
    args.models = [resolve_model(m) for m in args.models]
    sizes = args.batch_size or [256 if cuda else 8]
    if len(sizes) == 1:
        sizes = sizes * len(args.models)
    if len(sizes) != len(args.models):
        p.error("--batch-size takes one value or one per model")
    args.batch_sizes = dict(zip(args.models, sizes, strict=True))
    return args


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| impl | model | prec | attn | compile | batch | img/s | step ms | TFLOP/s | MFU "
        "| peak MiB | HF img/s | ratio | compile gain | note |",
        "|" + "---|" * 15,
    ]
    for r in rows:
        mfu = r.get("mfu")
        lines.append(
            f"| {r['impl']} | {short(r['model'])} | {r['precision']} | {r['backend']} "
            f"| {'-' if r.get('compile') is None else ('yes' if r['compile'] else 'no')} "
            f"| {r['batch']} | {fmt(r.get('images_per_s'), '.1f')} | {fmt(r.get('step_ms'), '.1f')} "
            f"| {fmt(r.get('tflops'), '.3g')} | {'-' if mfu is None else f'{100 * mfu:.1f}%'} "
            f"| {fmt(r.get('peak_memory_mib'), '.0f')} | {fmt(r.get('hf_images_per_s'), '.1f')} "
            f"| {fmt(r.get('ratio'), '.2f')} | {fmt(r.get('compile_gain'), '.2f')} "
            f"| {r.get('note') or ''} |"
        )
    return "\n".join(lines)


def write_json(args, device, device_name, hf_version, peaks, group_peaks, rows) -> Path:
    import timm

    out = Path(args.json or f"benchmarks/results/pretrain_throughput_{device.type}.json")
    payload = {
        "date": _dt.date.today().isoformat(),
        "argv": sys.argv,
        "device_name": device_name,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": hf_version,
        "threads": torch.get_num_threads(),
        "host_cpus": os.cpu_count(),
        "peaks": {k: {"tflops": v[0], "source": v[1]} for k, v in peaks.items()},
        "group_peaks": group_peaks,
        "flops_note": (
            "torch.utils.flop_counter.FlopCounterMode over forward+backward of one fp32 step at "
            "batch 1, scaled by the batch; attention counted via explicit matmuls (mimkit 'math', "
            "HF 'eager'); optimizer step not counted"
        ),
        "memory_note": (
            "cuda: torch.cuda.max_memory_allocated during the variant's rounds minus the other "
            "variants' resident parameters/buffers/optimizer state; cpu: growth of the process "
            "RSS high-water mark (VmHWM after /proc/self/clear_refs reset, else ru_maxrss) during "
            "the variant's rounds plus its own resident parameters/buffers/optimizer state"
        ),
        "rows": rows,
    }
    return write_results(out, payload)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are true fp32 (default)
    import timm

    try:
        import transformers

        hf_version = transformers.__version__
    except Exception as err:  # noqa: BLE001
        hf_version = None
        if not args.no_hf:
            log(f"transformers unavailable ({err}); running with --no-hf")
            args.no_hf = True
    from mimkit.pretrain.attention import xformers_available

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        device_name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        device_name += f" ({torch.get_num_threads()} threads)"
    log(
        f"device: {device_name}; torch {torch.__version__}; timm {timm.__version__}; "
        f"transformers {hf_version}"
    )

    # Peaks: a datasheet table on CUDA; on CPU a matmul rate measured during each group.
    peaks: dict[str, tuple[float | None, str]] = {}
    for precision in args.precisions:
        if device.type == "cuda":
            peaks[precision] = cuda_peak(device, precision)
        else:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            rate = measure_matmul_tflops(device, dtype, 2048, 3)
            peaks[precision] = (
                rate,
                f"{precision} 2048^3 matmul, measured at start: {rate * 1e3:.0f} GFLOP/s",
            )
        log(f"peak[{precision}]: {peaks[precision][1]}")
    group_peaks: list[str] = []

    rows: list[dict[str, Any]] = []
    compiled_flags = [True] if args.compile_only else ([False, True] if args.compile else [False])
    for name in args.models:
        batch = args.batch_sizes[name]
        t0 = time.perf_counter()
        flops_m = flops_per_sample("mimkit", name, device) * batch
        flops_h = None if args.no_hf else flops_per_sample("hf", name, device) * batch
        log(
            f"{short(name)}: {flops_m / 1e9 / batch:.1f} GFLOP/sample mimkit"
            + (f", {flops_h / 1e9 / batch:.1f} GFLOP/sample HF" if flops_h else "")
            + f" (counted in {time.perf_counter() - t0:.1f}s)"
        )
        for precision in args.precisions:
            variants: list[Variant] = []
            skipped: list[tuple[str, str]] = []
            for backend in args.backends:
                if backend == "xformers" and not (device.type == "cuda" and xformers_available()):
                    skipped.append(
                        (backend, "skipped: xformers needs CUDA and an importable xformers")
                    )
                    continue
                for compiled in compiled_flags:
                    variants.append(Variant("mimkit", backend, compiled))
            if not args.no_hf:
                for compiled in compiled_flags:
                    variants.append(Variant("hf", "sdpa", compiled))
            log(f"== {short(name)} {precision} batch {batch}: {[v.label for v in variants]}")
            probes: list[float] = []
            probe = None
            if device.type == "cpu":
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32

                def probe(dtype=dtype, probes=probes) -> None:
                    probes.append(measure_matmul_tflops(device, dtype, 2048, 2))

            run_group(name, precision, batch, variants, device, args, probe)

            peak_value, peak_note = peaks[precision]
            if probes:
                peak_value = statistics.median(probes)
                peak_note = (
                    f"measured {precision} 2048x2048x2048 torch.matmul on this CPU, median of "
                    f"{len(probes)} samples interleaved with the timing rounds: "
                    f"{peak_value * 1e3:.0f} GFLOP/s (range {min(probes) * 1e3:.0f}-"
                    f"{max(probes) * 1e3:.0f}); MFU is a fraction of this measured rate, "
                    "not of a datasheet peak"
                )
            group_peaks.append(f"{short(name)} {precision}: {peak_note}")
            hf = {v.compiled: v for v in variants if v.kind == "hf"}
            eager_ips: dict[str, float] = {}
            for v in sorted(variants, key=lambda v: (v.kind != "mimkit", v.compiled)):
                step = statistics.median(v.round_times) if v.round_times else None
                ips = batch / step if step else None
                flops = flops_m if v.kind == "mimkit" else flops_h
                tflops = flops / step / 1e12 if step and flops else None
                mfu = tflops / peak_value if tflops and peak_value else None
                row: dict[str, Any] = {
                    "impl": v.kind,
                    "model": name,
                    "device": device.type,
                    "device_name": device_name,
                    "torch": torch.__version__,
                    "timm": timm.__version__,
                    "transformers": hf_version,
                    "precision": precision,
                    "backend": v.backend,
                    "compile": v.compiled,
                    "compile_scope": args.compile_scope if v.compiled else None,
                    "batch": batch,
                    "images_per_s": ips,
                    "step_ms": step * 1e3 if step else None,
                    "step_ms_rounds": [t * 1e3 for t in v.round_times],
                    "flops_per_step": flops,
                    "tflops": tflops,
                    "mfu": mfu,
                    "peak_tflops": peak_value,
                    "peak_source": peak_note,
                    "peak_memory_mib": v.peak_bytes / 2**20 if v.round_times else None,
                    "resident_memory_mib": v.resident / 2**20,
                    "note": v.error,
                }
                if v.kind == "mimkit":
                    ref = hf.get(v.compiled)
                    ref_step = (
                        statistics.median(ref.round_times) if ref and ref.round_times else None
                    )
                    row["hf_images_per_s"] = batch / ref_step if ref_step else None
                    row["ratio"] = ips / row["hf_images_per_s"] if ips and ref_step else None
                key = v.kind + v.backend
                if not v.compiled and ips:
                    eager_ips[key] = ips
                row["compile_gain"] = (
                    ips / eager_ips[key] if v.compiled and ips and key in eager_ips else None
                )
                rows.append(row)
            for backend, note in skipped:
                rows.append(
                    {
                        "impl": "mimkit",
                        "model": name,
                        "device": device.type,
                        "device_name": device_name,
                        "torch": torch.__version__,
                        "precision": precision,
                        "backend": backend,
                        "compile": None,
                        "batch": batch,
                        "note": note,
                    }
                )

            write_json(args, device, device_name, hf_version, peaks, group_peaks, rows)

    # Output.
    print(
        f"\n{device_name}, torch {torch.__version__}, timm {timm.__version__}, "
        f"transformers {hf_version}, {_dt.date.today().isoformat()}"
    )
    for note in group_peaks:
        print(f"- peak, {note}")
    print(markdown_table(rows))
    out = write_json(args, device, device_name, hf_version, peaks, group_peaks, rows)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
