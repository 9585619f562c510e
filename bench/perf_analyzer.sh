#!/usr/bin/env bash
# NVIDIA's own load generator, perf_analyzer, against `palisade serve` (the bench repository of
# gateway_common.sh, full guard chain): what a Triton user would run first. It reads the model's
# metadata and configuration, drives infer requests over HTTP at each concurrency, and reads the
# server's statistics (Triton's statistics extension) before and after each window, so its
# "Server:" section is Palisade's own queue, input, infer and output times.
# perf_analyzer comes from tritonclient 2.41.0's manylinux wheel (later wheels no longer ship it),
# unpacked into a venv made here, with the CUDA runtime library it links against from PyPI
# (nvidia-cuda-runtime-cu12; no GPU is used). It also needs libb64: apt-get install libb64-0d.
# Its -H headers go with HTTP requests only, so it cannot present an API key over gRPC: HTTP here.
# Random input data would be refused by the bench policy's value range, so the input is zeros.
# Usage: bash bench/perf_analyzer.sh   (CONCURRENCY="1:16:15" MEASURE_MS=3000
#        DURABILITY=process; the CSV goes to target/bench/perf_analyzer.csv)
source "$(dirname "$0")/gateway_common.sh"
ldconfig -p | grep -q 'libb64\.so\.0d' || { echo "libb64 is needed: apt-get install libb64-0d" >&2; exit 2; }
VENV=${PA_VENV:-target/bench/perf-analyzer-venv}
if [ ! -x "$VENV/bin/perf_analyzer" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q nvidia-cuda-runtime-cu12
    "$VENV/bin/pip" download -q --no-deps "tritonclient==2.41.0" \
        --platform manylinux1_x86_64 --only-binary=:all: -d "$STATE/wheel"
    python3 - "$STATE/wheel" "$VENV/bin/perf_analyzer" <<'PY'
import glob, os, sys, zipfile
(wheel,) = glob.glob(os.path.join(sys.argv[1], "tritonclient-2.41.0-*.whl"))
with zipfile.ZipFile(wheel) as z:
    data = z.read("tritonclient-2.41.0.data/data/bin/perf_analyzer")
with open(sys.argv[2], "wb") as f:
    f.write(data)
os.chmod(sys.argv[2], 0o755)
PY
fi
CUDART=$(dirname "$(find "$VENV" -name 'libcudart.so.12' | head -1)")
P=$(free_port)
start_gateway "$P" gw --audit-durability "${DURABILITY:-process}"
mkdir -p target/bench
LD_LIBRARY_PATH="$CUDART" "$VENV/bin/perf_analyzer" -m mnist -u "127.0.0.1:$P" -i http \
    -H "Authorization: $AUTH" --shape input:1,1,28,28 --input-data zero \
    --concurrency-range "${CONCURRENCY:-1:16:15}" -p "${MEASURE_MS:-3000}" \
    -f target/bench/perf_analyzer.csv
echo "CSV: target/bench/perf_analyzer.csv"
# What the gateway counted, beside what perf_analyzer reported.
curl -fs -H "Authorization: $AUTH" "http://127.0.0.1:$P/v2/models/mnist/stats" | python3 -c '
import json, sys
m = json.load(sys.stdin)["model_stats"][0]
s = m["inference_stats"]
avg = lambda k: s[k]["ns"] / max(s[k]["count"], 1) / 1000
print(json.dumps({"executions": m["execution_count"], "failed": s["fail"]["count"],
                  "avg_us": {k: round(avg(k), 1) for k in
                             ("success", "queue", "compute_input", "compute_infer", "compute_output")}}))'
