#!/usr/bin/env bash
# Runs the pretraining throughput benchmark on a bare CUDA machine that has torch,
# timm, lightning and transformers but not mimkit: builds an importable `mimkit`
# package from this checkout (pretrain/ -> mimkit.pretrain, data/ -> mimkit.data,
# finetune/ -> mimkit.finetune, slurm/ -> mimkit.slurm), installs wheels from .whl/ if present, then runs
# benchmarks/pretrain_throughput.py with the given arguments.
#
#   bash benchmarks/run_on_gpu.sh --models B --batch-size 256 --precisions bf16 --compile
#   BENCH=method_overhead bash benchmarks/run_on_gpu.sh --batch-size 128 --precision bf16
#   BENCH=video_throughput bash benchmarks/run_on_gpu.sh ...   # any benchmarks/*.py with --device
#   BENCH=end_to_end bash benchmarks/run_on_gpu.sh --images 8000 --workers 15 --batch-size 256
#
# Set RUN_XFORMERS_TEST=1 to also run the xformers-vs-sdpa GPU test first, RUN_GPU_TESTS=1 to
# run every test marked `gpu` (xformers, nvJPEG, the CUDA NaN check, the GPU recipes) and stop.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=${MIMKIT_PKG_DIR:-/tmp/pkg}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
rm -rf "$PKG" && mkdir -p "$PKG/mimkit"
cp -r mimkit/. "$PKG/mimkit/"
cp -r pretrain "$PKG/mimkit/pretrain"
cp -r data "$PKG/mimkit/data"
cp -r finetune "$PKG/mimkit/finetune"
cp -r slurm "$PKG/mimkit/slurm"
export PYTHONPATH=$PKG:$PYTHONPATH PYTHONUNBUFFERED=1
python3 -P -c "import torch, mimkit.pretrain; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -P -c "import xformers, xformers.ops; print('xformers', xformers.__version__)" || true
if [ "${RUN_XFORMERS_TEST:-0}" = 1 ]; then
    python3 -P -m pytest -q -p no:cacheprovider tests/test_attention.py -k "gpu or xformers" -rs || true
fi
if [ "${RUN_GPU_TESTS:-0}" = 1 ]; then
    exec python3 -P -m pytest -q -p no:cacheprovider -m gpu -rs "$@" \
        tests/test_gpu.py tests/test_base.py tests/test_attention.py tests/test_masking.py
fi
if [ "${PROFILE_ONLY:-0}" = 1 ]; then exec python3 benchmarks/profile_step.py "$@"; fi
exec python3 benchmarks/"${BENCH:-pretrain_throughput}".py --device cuda "$@"
