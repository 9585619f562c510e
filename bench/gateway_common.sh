# Shared by the gateway benchmarks: build, start `palisade serve` on a free port, helpers.
# Sourced, not run. Needs python3, curl and wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk > /dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
PROFILE=${PROFILE:-release}
cargo build -q --profile "$PROFILE" -p palisade-cli
# The bare endpoint is built in one invocation with palisade-cli, so that cargo compiles its
# dependencies with the features palisade-cli's graph turns on: built alone, tract (through
# smallvec, half, ...) got other features than in `palisade`, and different machine code. Its
# im2col took 21 µs per request there against 29-35 µs in `palisade` (perf, 16 connections,
# two runs each, 2026-12-04), a difference of tract builds, not of guards.
cargo build -q --profile "$PROFILE" -p palisade-cli -p palisade-gateway --features palisade-gateway/tract --example bare_endpoint
TDIR=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
BIN=$TDIR/palisade
BARE=$TDIR/examples/bare_endpoint
STATE=$(mktemp -d)
BODY=$STATE/body.bin
# BATCH images per request (1 by default, at most 16): a heavier model call against the same
# guards, to see how the guards' cost per request weighs against the model's.
HLEN=$(python3 bench/oip_body.py "$BODY" "${BATCH:-1}")
export BODY HLEN
# The benchmarks serve the bundled model from a repository of their own whose policy keeps every
# guard on the path but sets limits no run reaches (the bundled policy allows 5,000 requests per
# second per key, which would turn a fast run into 429s), bench/bench-policy.toml, signed with a
# key made here.
REPO=$STATE/repo
mkdir -p "$REPO/mnist/1"
cp models/mnist_cnn_public.onnx "$REPO/mnist/1/model.onnx"
cp bench/bench-policy.toml "$REPO/mnist/1/policy.toml"
"$BIN" keygen --private-key "$STATE/bench.key" --public-key "$STATE/bench.pub" > /dev/null
"$BIN" sign --private-key "$STATE/bench.key" --signature "$REPO/mnist/1/model.sig" "$REPO/mnist/1" > /dev/null
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do { kill -9 "$p" && wait "$p"; } > /dev/null 2>&1 || true; done
    rm -rf "$STATE"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() { # URL PID
    for _ in $(seq 1 300); do
        curl -fs "$1" > /dev/null 2>&1 && return 0
        kill -0 "$2" 2> /dev/null || { echo "server died" >&2; cat "$STATE/serve.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "server not ready" >&2; exit 1
}

start_gateway() { # PORT [STATE_SUBDIR=gw [SERVE_ARGS...]]; sets GW_PID (and AUTH on first start)
    local port=$1 sub=${2:-gw}
    shift; shift || true
    "$BIN" --json serve --models "$REPO" --trusted-key "$STATE/bench.pub" --state "$STATE/$sub" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$port" \
        "$@" >> "$STATE/$sub.out" 2>> "$STATE/serve.log" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_ready "http://127.0.0.1:$port/v2/health/ready" "$GW_PID"
    if [ -z "${AUTH:-}" ]; then
        AUTH="Bearer $(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read())["key"])' "$STATE/$sub.out")"
        export AUTH
    fi
}

audit_entries() { "$BIN" --json audit verify --state "$STATE/gw" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["entries"])'; }

served_infers() { # PORT: infer requests the gateway answered, from its own metrics
    curl -fs "http://127.0.0.1:$1/metrics" | awk '/^palisade_requests_total\{/ && /route="infer"/ {s+=$NF} END {print s+0}'
}

run_wrk() { # URL CONNECTIONS SECONDS -> one JSON line
    local t=$(( $2 < 2 ? 1 : 2 ))
    wrk -t"$t" -c"$2" -d"$3"s --latency -s bench/oip_post.lua "$1" | grep '^{'
}

field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

start_bare() { # PORT [BARE_BINARY]; sets BARE_PID once the endpoint answers an infer
    "${2:-$BARE}" models/mnist_cnn_public.onnx "127.0.0.1:$1" 2>> "$STATE/bare.log" &
    BARE_PID=$!
    PIDS+=("$BARE_PID")
    # The bare endpoint has no health route.
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null -H "Inference-Header-Content-Length: $HLEN" --data-binary @"$BODY" \
            "http://127.0.0.1:$1/v2/models/mnist/infer" && return 0
        sleep 0.1
    done
    echo "bare endpoint not answering" >&2; cat "$STATE/bare.log" >&2; exit 1
}

# cpu_us: the server process's CPU time (user + system, all threads) over a run.
TICK_US=$((1000000 / $(getconf CLK_TCK)))
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # PID, or PID/task/TID for one thread

measure() { # SERVER_PID URL CONNECTIONS SECONDS (with $AUTH) -> '"cpu_us": N, "run": {...}'
    run_wrk "$2" "$3" 1 > /dev/null # warm-up
    local t0 t1 r
    t0=$(cpu_ticks "$1")
    r=$(run_wrk "$2" "$3" "$4")
    t1=$(cpu_ticks "$1")
    [ "$(field "$r" non2xx)" = 0 ] || echo "warning: $2 answered non-2xx: $r" >&2
    echo "\"cpu_us\": $(( (t1 - t0) * TICK_US )), \"run\": $r"
}
