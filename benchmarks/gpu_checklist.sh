#!/usr/bin/env bash
# Every GPU measurement the open targets need, in parts that each fit one 10-minute command
# on an H100/H200 (see docs/performance.md). Results (JSON and the printed tables) go to
# RESULTS (default $OUT if set, else /tmp/gpu_results). Each part goes through
# benchmarks/run_on_gpu.sh, so carry .whl/ with jsonargparse, typeshed_client,
# docstring_parser, webdataset, braceexpand (and xformers to measure it).
#
#   bash benchmarks/gpu_checklist.sh tests   # every `gpu` test: xformers, nvJPEG, NaN check, recipes
#   bash benchmarks/gpu_checklist.sh mae_b   # xformers test, compiled-step profile, MAE ViT-B MFU
#   bash benchmarks/gpu_checklist.sh mae_l   # MAE ViT-L MFU and HF ratio; ViT-B whole-loss compile
#   bash benchmarks/gpu_checklist.sh autotune  # MAE ViT-B/L with compile mode max-autotune-no-cudagraphs
#   bash benchmarks/gpu_checklist.sh video   # VideoMAE-B MFU, decoder masking, HF ratio; methods
#   bash benchmarks/gpu_checklist.sh data    # end to end: JPEG shards vs synthetic, 15 workers
#   DRY_RUN=1 bash benchmarks/gpu_checklist.sh all   # print the commands only
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-${OUT:-/tmp/gpu_results}}
mkdir -p "$RESULTS"

step() {  # step NAME BENCH [ENV=...] -- ARGS...: one benchmark, its output kept in RESULTS/NAME.log
    local name=$1 bench=$2
    shift 2
    echo "== $name: BENCH=$bench $*"
    if [ "${DRY_RUN:-0}" = 1 ]; then return 0; fi
    BENCH=$bench bash benchmarks/run_on_gpu.sh "$@" --json "$RESULTS/$name.json" 2>&1 |
        tee "$RESULTS/$name.log" | grep -v "^\s*$" | tail -n 40 || echo "!! $name failed"
}

tests() {
    echo "== tests: RUN_GPU_TESTS=1"
    if [ "${DRY_RUN:-0}" = 1 ]; then return 0; fi
    RUN_GPU_TESTS=1 bash benchmarks/run_on_gpu.sh 2>&1 | tee "$RESULTS/gpu_tests.log" |
        tail -n 40 || echo "!! gpu tests failed"
}

mae_b() {
    if [ "${DRY_RUN:-0}" != 1 ]; then
        RUN_XFORMERS_TEST=1 PROFILE_ONLY=1 bash benchmarks/run_on_gpu.sh --model B \
            --batch-size 512 --compile 2>&1 | tee "$RESULTS/profile_vit_b.log" | tail -n 45 || true
    fi
    step mae_vit_b pretrain_throughput --models B --batch-size 512 --precisions bf16 \
        --backends sdpa xformers --compile --warmup 3 --steps 10 --round-steps 5
}

mae_l() {
    step mae_vit_l pretrain_throughput --models L --batch-size 256 --precisions bf16 \
        --backends sdpa --compile --warmup 3 --steps 10 --round-steps 5
    step mae_vit_b_loss_scope pretrain_throughput --models B --batch-size 512 \
        --precisions bf16 --compile-only --compile-scope loss --no-hf --warmup 3 --steps 10 \
        --round-steps 5
}

autotune() {  # model.compile_mode: max-autotune-no-cudagraphs against the default mode
    step mae_autotune pretrain_throughput --models B L --batch-size 512 256 --precisions bf16 \
        --compile-only --no-hf --compile-mode max-autotune-no-cudagraphs --warmup 3 --steps 10 \
        --round-steps 5
}

video() {
    step videomae_vit_b video_throughput --size B --batch-size 64 --decoder-mask 0.0 0.5 \
        --warmup 3 --steps 10
    step methods method_overhead --batch-size 128 --precision bf16 --warmup 2 --steps 6
}

data() {
    step end_to_end end_to_end --images 8000 --workers 15 --batch-size 256 --warmup 10 \
        --steps 40
}

case "${1:-all}" in
    tests) tests ;;
    mae_b) mae_b ;;
    mae_l) mae_l ;;
    autotune) autotune ;;
    video) video ;;
    data) data ;;
    all) tests; mae_b; mae_l; autotune; video; data ;;
    *) echo "usage: $0 tests|mae_b|mae_l|autotune|video|data|all" >&2; exit 2 ;;
esac
ls -l "$RESULTS"
