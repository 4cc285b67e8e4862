"""``mimkit plan``: per-GPU batch, accumulation and checkpointing for a recipe's effective batch.

Memory per GPU is modelled as ``static + batch * per_sample``:

- ``static``: parameters, gradients and AdamW's two moments (all fp32 under any
  ``*-mixed`` precision: 16 bytes per trainable parameter, 4 per frozen one).
- ``per_sample``: the bytes autograd saves for backward for one loaded input (an image
  with its ``mask_repeats``, a video with its ``repeat_aug`` clips), counted by
  running the method's real loss on small batches with ``saved_tensors_hooks`` (unique
  storages, parameters excluded), under the recipe's autocast dtype. With activation
  checkpointing only block inputs are saved, plus one block's activations while it
  is recomputed.

On a CUDA machine ``--measure`` runs real training steps and reports the measured peak
next to the estimate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .help_format import DefaultsHelpFormatter

__all__ = ["MemoryModel", "saved_activation_bytes", "memory_model", "choose_batch", "main"]

# Dense peak TFLOP/s for bf16 (tensor cores), used only for the expected step time.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "V100": 125.0,
}


@dataclass
class MemoryModel:
    """Bytes per GPU as ``static + batch * per_sample``."""

    static: int
    per_sample: int
    flops_per_sample: float

    def bytes_for(self, batch: int) -> int:
        return self.static + batch * self.per_sample


def _report_data_problems(datamodule: Any, gpus: int) -> None:
    """Says up front what the data module's own pre-launch check would stop the run for."""
    from mimkit.data.errors import DataConfigError

    preflight = getattr(datamodule, "preflight", None)
    if preflight is None:
        return
    try:
        preflight("fit", gpus)
    except DataConfigError as error:
        print(f"warning: on {gpus} GPUs the run would stop: {error}")
    except FileNotFoundError as error:
        print(f"note: not found on this machine (fine if the job's machines have it): {error}")


def memory_size(text: str) -> int:
    """``--gpu-memory`` in bytes; a value it cannot read is a usage error."""
    try:
        return parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r}; write e.g. 80GB or 40GiB"
        ) from None


def parse_bytes(text: str) -> int:
    """``80GB``/``80GiB``/``80G`` -> bytes (GB read as GiB, as GPU memory is quoted)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    if value and value[-1] in scale:
        return int(float(value[:-1]) * scale[value[-1]])
    return int(float(value))


def saved_activation_bytes(run: Callable[[], Tensor], exclude: Sequence[Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` builds its graph.

    Args:
        run: computes a loss (its graph is discarded).
        exclude: tensors not to count (parameters, which are memory already).
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in excluded:
            seen[pointer] = max(seen.get(pointer, 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run()
    del loss
    return sum(seen.values())


def _static_bytes(model: nn.Module) -> int:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return 16 * trainable + 4 * frozen


def memory_model(
    model: nn.Module,
    make_batch: Callable[[int], dict],
    autocast_dtype: torch.dtype | None = None,
    batches: tuple[int, int] = (1, 2),
) -> MemoryModel:
    """Builds the memory model of a pretraining module by counting on the CPU.

    Args:
        model: a ``PretrainModule`` (its ``compute_loss`` is run in train mode).
        make_batch: ``batch_size -> batch dict``.
        autocast_dtype: ``torch.bfloat16`` for ``bf16-mixed``, ``None`` for fp32.
        batches: two batch sizes; the difference gives the per-sample bytes.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    params = list(model.parameters())

    def loss_for(batch_size: int) -> Callable[[], Tensor]:
        batch = make_batch(batch_size)

        def run() -> Tensor:
            with torch.autocast(
                "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                return model.compute_loss(batch)["loss"]

        return run

    small, large = batches
    low = saved_activation_bytes(loss_for(small), params)
    high = saved_activation_bytes(loss_for(large), params)
    per_sample = max(0, (high - low) // (large - small))
    with FlopCounterMode(display=False) as counter:
        loss_for(1)().backward()
    model.zero_grad(set_to_none=True)
    static = _static_bytes(model)
    return MemoryModel(static, per_sample, float(counter.get_total_flops()))


def choose_batch(
    model: MemoryModel,
    target_effective_batch: int,
    gpus: int,
    memory_bytes: int,
    headroom: float = 0.9,
) -> tuple[int, int] | None:
    """Largest per-GPU batch that fits and divides the effective batch exactly.

    Returns:
        ``(per_gpu_batch, accumulation)`` or ``None`` when not even one sample fits.
    """
    budget = headroom * memory_bytes
    if model.bytes_for(1) > budget:
        return None
    per_gpu_total = max(1, target_effective_batch // gpus)
    fitting = int((budget - model.static) // max(1, model.per_sample))
    for batch in range(min(fitting, per_gpu_total), 0, -1):
        if per_gpu_total % batch == 0:
            return batch, per_gpu_total // batch
    return 1, per_gpu_total


CPU_SAFE = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
    "--trainer.logger=false",
    "--model.compile_modules=false",
]


def _recipe_objects(config: str, overrides: Sequence[str]):
    """The recipe's model and data, built on the CPU, and its trainer settings."""
    import yaml

    from mimkit.pretrain_cli import PretrainCLI

    with open(config) as handle:
        trainer_cfg = (yaml.safe_load(handle) or {}).get("trainer", {}) or {}
    cli = PretrainCLI(args=["--config", config, *overrides, *CPU_SAFE], run=False)
    return cli.model, cli.datamodule, trainer_cfg


def _make_batch_fn(datamodule, in_chans: int = 3) -> Callable[[int], dict]:
    """``batch_size`` loaded inputs as the model receives them (a video's ``repeat_aug``
    clips included), so that memory and FLOPs are counted per loaded input."""
    size = int(getattr(datamodule, "img_size", 224))
    frames = getattr(datamodule, "num_frames", None)
    clips_per_video = int(getattr(datamodule, "repeat_aug", 1) or 1) if frames else 1

    def make(inputs: int) -> dict:
        batch_size = inputs * clips_per_video
        shape = (
            (batch_size, in_chans, frames, size, size)
            if frames
            else (batch_size, in_chans, size, size)
        )
        pixels = torch.randn(shape)
        return {
            "pixels": pixels,
            "views": [pixels, pixels.clone()],
            "label": torch.zeros(batch_size, dtype=torch.long),
        }

    return make


def _set_checkpointing(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if hasattr(module, "grad_checkpointing"):
            module.grad_checkpointing = enabled


def _measure_cuda(
    model: nn.Module, make_batch, batch: int, autocast_dtype, timed_steps: int = 5
) -> tuple[int, float]:
    """Peak bytes over two training steps at ``batch``, and the median time of a further
    ``timed_steps`` (eager, seconds per micro-batch)."""
    model = model.cuda().train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
    cuda_batch = {
        k: (v.cuda() if isinstance(v, Tensor) else [t.cuda() for t in v])
        for k, v in make_batch(batch).items()
    }

    def step() -> None:
        with torch.autocast(
            "cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            loss = model.compute_loss(cuda_batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    times = []
    for _ in range(timed_steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return peak, statistics.median(times)


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mimkit plan",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", required=True, help="pretraining recipe (YAML)")
    parser.add_argument(
        "--gpus", type=int, required=True, help="GPUs in total (nodes x GPUs per node)"
    )
    parser.add_argument(
        "--gpu-memory", type=memory_size, default="80GB", help="memory per GPU, e.g. 80GB"
    )
    parser.add_argument(
        "--gpu-name",
        default="H100",
        type=str.upper,
        choices=sorted(PEAK_BF16_TFLOPS),
        help="GPU whose dense bf16 peak the step-time estimate uses",
    )
    parser.add_argument(
        "--mfu",
        type=float,
        default=0.3,
        help="assumed model FLOP utilization (MAE ViT-B/L, compiled bf16 on an H100: 29-33%%)",
    )
    parser.add_argument(
        "--effective-batch", type=int, help="target effective batch; None: the recipe's"
    )
    parser.add_argument("--measure", action="store_true", help="on CUDA: measure the chosen batch")
    parser.epilog = "Other options are recipe overrides, e.g. --data.img_size=256."
    args, overrides = parser.parse_known_args(argv)

    model, datamodule, trainer_cfg = _recipe_objects(args.config, overrides)
    precision = str(trainer_cfg.get("precision", "32-true"))
    autocast_dtype = torch.bfloat16 if precision.startswith("bf16") else None
    recipe_batch = int(getattr(datamodule, "batch_size", 1))  # loaded inputs, as the lr rule
    devices = trainer_cfg.get("devices", 1)
    devices = devices if isinstance(devices, int) else args.gpus
    nodes = int(trainer_cfg.get("num_nodes", 1))
    accumulation = int(trainer_cfg.get("accumulate_grad_batches", 1))
    target = args.effective_batch or recipe_batch * devices * nodes * accumulation
    memory = args.gpu_memory
    in_chans = getattr(getattr(model, "encoder", None), "in_chans", 3)
    make_batch = _make_batch_fn(datamodule, in_chans)

    print(
        f"recipe: {args.config}\nprecision: {precision}; target effective batch: {target}; {args.gpus} GPUs x {_gib(memory)}"
    )
    choice, estimate, checkpointing = None, None, False
    for checkpointing in (False, True):
        _set_checkpointing(model, checkpointing)
        estimate = memory_model(model, make_batch, autocast_dtype)
        choice = choose_batch(estimate, target, args.gpus, memory)
        if choice is not None and (choice[0] >= min(8, target // args.gpus) or checkpointing):
            break
    print(
        f"static (params, grads, AdamW): {_gib(estimate.static)}; activations per sample: {estimate.per_sample / 2**20:.1f} MiB"
    )
    if choice is None:
        print(
            "does not fit even at batch 1 with activation checkpointing: shard with FSDP "
            "(mimkit.pretrain.fsdp.BlockFSDPStrategy) or use GPUs with more memory"
        )
        return 1
    batch, accumulation = choice
    peak = PEAK_BF16_TFLOPS[args.gpu_name] * (1.0 if autocast_dtype else 0.5)
    step = estimate.flops_per_sample * batch * accumulation / (peak * 1e12 * args.mfu)
    print(
        f"per-GPU batch: {batch}\naccumulation: {accumulation}\nactivation checkpointing: {'yes' if checkpointing else 'no'}"
    )
    print(f"estimated peak memory per GPU: {_gib(estimate.bytes_for(batch))}")
    print(
        f"expected optimizer-step time: {step:.3g} s at {args.mfu:.0%} MFU of {peak:.0f} TFLOP/s ({args.gpu_name})"
    )
    print(
        f"command: --data.batch_size {batch} --trainer.accumulate_grad_batches {accumulation} "
        f"--model.encoder.init_args.grad_checkpointing {str(checkpointing).lower()}"
    )
    _report_data_problems(datamodule, args.gpus)
    if args.measure:
        if not torch.cuda.is_available():
            print("--measure needs a CUDA GPU; showing the estimate only", file=sys.stderr)
        else:
            measured, seconds = _measure_cuda(model, make_batch, batch, autocast_dtype)
            error = (estimate.bytes_for(batch) - measured) / measured
            print(f"measured peak: {_gib(measured)} (estimate {error:+.1%})")
            mfu = estimate.flops_per_sample * batch / (seconds * peak * 1e12)
            print(
                f"measured step time (eager, one GPU): {seconds * accumulation:.3f} s per "
                f"optimizer step ({seconds:.3f} s per micro-batch, {mfu:.0%} MFU)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
