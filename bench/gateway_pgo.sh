#!/usr/bin/env bash
# A profile-guided build of `palisade` (PGO): an instrumented build is trained on the request
# paths the gateway benchmarks drive, and rebuilt from what it counted, so that the compiler
# lays out and inlines the hot paths (the guards, hyper, tokio, tract) as they run. Both servers
# of the benchmark, the bare endpoint and `serve`, are in the training, in the same proportion,
# so that neither is left to code the profile calls cold.
#
# What the training covers: HTTP/1 binary infers at 1, 16 and 64 connections on both servers,
# JSON infers, gRPC infers (tritonclient, in a venv made here, as the interop test does), and
# `full` as well as `process` audit durability. A path the training does not take (TLS, the
# admin API) is what the profile calls cold: built for size and placed apart, so a deployment
# that leans on such a path should train on it too (TRAIN_EXTRA: a command run against the
# instrumented gateway, with PORT and AUTH set).
#
# Needs an llvm-profdata that reads rustc's raw profiles: Debian bookworm's llvm-profdata-19
# reads those of rustc 1.95 (LLVM 22) (apt-get install llvm-19).
# Usage: bash bench/gateway_pgo.sh OUT_DIR   (LLVM_PROFDATA=llvm-profdata-19 TRAIN_SECONDS=5
#        PGO_WORK=target/pgo: the instrumented build, its profiles and the final build)
# Then compare it with a plain build:
#   VARIANTS="plain=DIR_OF_A_PLAIN_BUILD pgo=OUT_DIR" bash bench/gateway_ab.sh
set -euo pipefail
OUT=$(realpath -m "${1:?usage: bash bench/gateway_pgo.sh OUT_DIR}")
CALLER=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFDATA=${LLVM_PROFDATA:-}
if [ -z "$PROFDATA" ]; then
    PROFDATA=$(command -v llvm-profdata || true)
    [ -n "$PROFDATA" ] || PROFDATA=$(find /usr/bin -name 'llvm-profdata-*' 2> /dev/null | sort -V | tail -1)
fi
[ -n "$PROFDATA" ] && [ -x "$(command -v "$PROFDATA")" ] || {
    echo "llvm-profdata is needed (apt-get install llvm-19, or set LLVM_PROFDATA)" >&2
    exit 2
}
WORK=$(realpath -m "${PGO_WORK:-target/pgo}")
TRAIN=${TRAIN_SECONDS:-5}
rm -rf "$WORK/raw"
mkdir -p "$WORK/raw" "$OUT"
echo "# instrumented build ($WORK/gen)" >&2
RUSTFLAGS="-Cprofile-generate=$WORK/raw" cargo build -q --release -p palisade-cli --target-dir "$WORK/gen"
INSTRUMENTED=$WORK/gen/release/palisade

# The training, with the benchmarks' own set-up (model repository, policy, body, wrk script).
# gateway_common.sh finds the checkout from $0 as the caller gave it, so it is sourced from the
# caller's folder; it also builds the plain release binary, which the training does not use.
(
    cd "$CALLER"
    source "$ROOT/bench/gateway_common.sh"
    BIN=$INSTRUMENTED
    stop() { # PID: SIGTERM, so that the process ends normally and writes its profile
        kill -TERM "$1"
        wait "$1" || { echo "a server did not stop cleanly: no profile from it" >&2; exit 1; }
    }
    BP=$(free_port)
    start_bare "$BP" "$BIN"
    for c in 1 16 64; do
        AUTH= run_wrk "http://127.0.0.1:$BP/v2/models/mnist/infer" "$c" "$TRAIN" > /dev/null
    done
    stop "$BARE_PID"
    for durability in process full; do
        P=$(free_port)
        unset AUTH
        start_gateway "$P" "gw-$durability" --audit-durability "$durability"
        for c in 1 16 64; do
            run_wrk "http://127.0.0.1:$P/v2/models/mnist/infer" "$c" "$TRAIN" > /dev/null
        done
        if [ "$durability" = process ]; then
            # JSON and gRPC infers, with the same input.
            VENV=$WORK/venv
            [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
            "$VENV/bin/pip" install -q --disable-pip-version-check "tritonclient[http,grpc]" numpy
            "$VENV/bin/python" - "$P" "${AUTH#Bearer }" "$TRAIN" <<'PY'
import sys, time
import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th
port, key, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
x = np.load("data/reference-parity/public_attacks_x16.npy").astype(np.float32)[:1]
h = th.InferenceServerClient(url=f"127.0.0.1:{port}")
g = tg.InferenceServerClient(url=f"127.0.0.1:{port}")
for client, mod, binary, meta in [(h, th, False, {"Authorization": f"Bearer {key}"}),
                                  (g, tg, None, {"authorization": f"Bearer {key}"})]:
    end, n = time.monotonic() + secs, 0
    while time.monotonic() < end:
        i = mod.InferInput("input", list(x.shape), "FP32")
        if binary is None:
            i.set_data_from_numpy(x)
        else:
            i.set_data_from_numpy(x, binary_data=binary)
        client.infer("mnist", [i], headers=dict(meta))
        n += 1
    print(f"trained {mod.__name__}: {n} infers", file=sys.stderr)
PY
            if [ -n "${TRAIN_EXTRA:-}" ]; then PORT=$P AUTH=$AUTH bash -c "$TRAIN_EXTRA"; fi
        fi
        stop "$GW_PID"
    done
)
"$PROFDATA" merge -o "$WORK/merged.profdata" "$WORK"/raw/*.profraw
echo "# optimised build ($WORK/use, profile $WORK/merged.profdata)" >&2
RUSTFLAGS="-Cprofile-use=$WORK/merged.profdata" cargo build -q --release -p palisade-cli --target-dir "$WORK/use"
cp "$WORK/use/release/palisade" "$OUT/palisade"
echo "$OUT/palisade"
