#!/usr/bin/env bash
# `palisade model check` on the reference MNIST CNN (PyTorch export) and the real pretrained
# ONNX models in ../shared/data/onnx-models (magika, silero VAD), then the interpreter's
# value_and_grad throughput at batch 128 on the reference model.
#
# Usage: bash bench/onnx_check.sh        (from the repository root)
# Exit code: 0 when every model was checked (trusted or not), 2 when a check errored.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data
cargo build --release -q -p palisade-cli -p palisade-model --example onnx_vjp_throughput || exit 2
BIN=target/release/palisade

status=0
run() {
    echo "=================================================================="
    echo "palisade model check $*"
    "$BIN" model check "$@"
    rc=$?
    case $rc in
        0) echo "(exit 0: trusted)";;
        1) echo "(exit 1: not trusted)";;
        *) echo "(exit $rc: error)"; status=2;;
    esac
}

run "$DATA/reference-models/mnist_cnn_public.onnx"
for m in "$DATA"/onnx-models/*.onnx; do
    echo "=================================================================="
    echo "palisade model info $m"
    "$BIN" model info "$m" || status=2
    run "$m"
done

echo "=================================================================="
echo "interpreter throughput (batch 128) on the reference model"
target/release/examples/onnx_vjp_throughput "$DATA/reference-models/mnist_cnn_public.onnx" 128 20 || status=2
echo "PyTorch anchor (same machine, 2 threads, from $DATA/reference-models/README.md):"
echo "  torchattacks PGD-40 on 1,000 images (320 gradient steps at batch 128) takes 9.4 s ≈ 29 ms/step"
exit $status
