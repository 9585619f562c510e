#!/usr/bin/env bash
# Native CNN training step and input-gradient step at batch 128: Palisade (burn flex) vs PyTorch
# (CPU wheel from PyPI), same architecture, same thread count, in one run. Prints both and the
# ratios (Palisade time / PyTorch time; lower is better for Palisade).
#
#   bash bench/train_bench.sh [threads=2] [iters=30]
#
# Also tries burn's CubeCL `cpu` backend (feature `cpu` of palisade-model); says so if it does
# not build here.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
ITERS="${2:-30}"
VENV=bench/.venv-torch

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$VENV"
    # PyPI's Linux wheel preloads its CUDA libraries even on CPU, so install it with its
    # dependencies (a few GB); the benchmark runs it on the CPU only.
    "$VENV/bin/pip" install -q torch numpy
fi

cargo build -q --release -p palisade-model --example train_step_bench
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

echo "== palisade (burn flex), $THREADS threads"
FLEX=$(target/release/examples/train_step_bench "$ITERS")
echo "$FLEX"
echo "== pytorch, $THREADS threads"
TORCH=$("$VENV/bin/python" bench/train_bench.py "$THREADS" "$ITERS")
echo "$TORCH"

CPU=""
echo "== palisade (burn cpu / CubeCL), $THREADS threads"
if cargo build -q --release -p palisade-model --features cpu --example train_step_bench \
    --target-dir target/bench-cpu 2>/tmp/palisade-bench-cpu.log; then
    CPU=$(PALISADE_DEVICE=cpu target/bench-cpu/release/examples/train_step_bench "$ITERS" || true)
    echo "${CPU:-the cpu backend failed at run time}"
else
    echo "burn's cpu backend did not build here (see /tmp/palisade-bench-cpu.log):"
    grep -m 3 -E '^error|Err' /tmp/palisade-bench-cpu.log || tail -n 3 /tmp/palisade-bench-cpu.log
fi

python3 - "$FLEX" "$TORCH" "$CPU" <<'PY'
import json, sys
flex, torch = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("== ratios (palisade / pytorch, time per step)")
for k in ("train_step_ms", "input_grad_ms"):
    print(f"flex  {k:14s} {flex[k]:9.2f} ms vs {torch[k]:9.2f} ms  ratio {flex[k] / torch[k]:.2f}x")
if sys.argv[3]:
    cpu = json.loads(sys.argv[3])
    for k in ("train_step_ms", "input_grad_ms"):
        print(f"cpu   {k:14s} {cpu[k]:9.2f} ms vs {torch[k]:9.2f} ms  ratio {cpu[k] / torch[k]:.2f}x")
PY
