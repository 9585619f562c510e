# Shared by the gateway benchmarks: build, start `palisade serve` on a free port, helpers.
# Sourced, not run. Needs python3, curl and wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk > /dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
PROFILE=${PROFILE:-release}
cargo build -q --profile "$PROFILE" -p palisade-cli
TDIR=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
BIN=$TDIR/palisade
# The bare endpoint is `palisade bench-endpoint` (hidden): the same binary, so the same machine
# code for tract. A separate binary (an example, until 2026-12-06) got other machine code: its
# im2col took 21 µs per request against 29-35 µs in `palisade` (perf, 16 connections,
# 2026-12-04); and two `palisade` builds whose request paths did the same work spent 26 and 33 µs
# there, the same code at other addresses (2026-12-06): differences of builds, not of guards.
# STATE_DIR: where the servers' state (audit log, journal, limits.db) goes; the default, a fresh
# folder under $TMPDIR, may be a tmpfs, where an fsync costs nothing (the machine line says
# which file system it is).
STATE=$(mktemp -d -p "${STATE_DIR:-${TMPDIR:-/tmp}}")
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
"$BIN" sign --private-key "$STATE/bench.key" --name mnist/1 --signature "$REPO/mnist/1/model.sig" "$REPO/mnist/1" > /dev/null
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do { kill -9 "$p" && wait "$p"; } > /dev/null 2>&1 || true; done
    rm -rf "$STATE"
}
trap cleanup EXIT

# The conditions a run's figures belong to, as one line: the CPU, how many cores this process may
# use, and how an idle core waits. On a VM whose guest halt polling is off
# (`guest_halt_poll_ns` 0, the kernel's default being 200000), an idle vCPU halts at once, and
# a request at one connection pays for it: with the vCPUs held out of halt (HOLD_CPU_LATENCY=1)
# the bare endpoint served 22-27% more requests per second at one connection and the gateway
# 25-26% more, where the ratio between them stayed within its round-to-round spread (0.929 and
# 0.931 halting, 0.951 and 0.944 held, 4 rounds each; 0.908 held over 2 rounds with this script's
# option; 2 vCPUs, 2026-12-05).
machine_line() {
    local cpu idle poll qos fs
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2> /dev/null)
    idle=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2> /dev/null || echo unknown)
    poll=$(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns 2> /dev/null || echo -)
    qos=$([ -n "${HOLD_PID:-}" ] && echo "held at 0 us" || echo "not held")
    fs=$(stat -f -c %T "$STATE" 2> /dev/null || echo unknown)
    echo "# machine: ${cpu:-unknown CPU}, $(nproc) cores; cpuidle $idle, guest_halt_poll_ns $poll; cpu_dma_latency $qos; state on $fs"
    [ "$fs" != tmpfs ] || echo "# warning: the state is on tmpfs, where fsync costs nothing: the 'full' figures are not those of a disk (set STATE_DIR)"
}

# HOLD_CPU_LATENCY=1: for the whole run, hold the PM QoS CPU latency limit at 0 µs
# (/dev/cpu_dma_latency, root only; what cyclictest does), so that idle cores poll instead of
# halting: figures without the host's cost of waking an idle core. Released when the script exits.
HOLD_PID=
if [ "${HOLD_CPU_LATENCY:-0}" = 1 ]; then
    [ -w /dev/cpu_dma_latency ] || { echo "HOLD_CPU_LATENCY=1 needs /dev/cpu_dma_latency, writable (root)" >&2; exit 2; }
    python3 -c 'import os, struct, time
f = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
os.write(f, struct.pack("i", 0))
print("held", flush=True)
time.sleep(1 << 30)' > "$STATE/hold.out" &
    HOLD_PID=$!
    PIDS+=("$HOLD_PID")
    for _ in $(seq 1 50); do grep -q held "$STATE/hold.out" 2> /dev/null && break; sleep 0.1; done
    grep -q held "$STATE/hold.out" || { echo "could not hold /dev/cpu_dma_latency" >&2; exit 2; }
fi
# Every gateway benchmark's output starts with the conditions its figures belong to.
machine_line

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
    # wrk leaves an answer slower than its timeout (2 s by default) out of the latencies, and
    # counts it only as a socket error: 30 s keeps a stall in the p99.
    wrk -t"$t" -c"$2" -d"$3"s --timeout 30s --latency -s bench/oip_post.lua "$1" | grep '^{'
}

field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

start_bare() { # PORT [PALISADE_BINARY]; sets BARE_PID once the endpoint answers an infer
    "${2:-$BIN}" bench-endpoint --model models/mnist_cnn_public.onnx --listen "127.0.0.1:$1" 2>> "$STATE/bare.log" &
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
    # A refusal (401, 429, 503) or a failed connection is fast: counted as a served request it
    # would flatter the server that refused. Such a run is no figure.
    if [ "$(field "$r" non2xx)" != 0 ] || [ "$(field "$r" socket_errors)" != 0 ]; then
        echo "error: $2 answered non-2xx or failed connections, the run is void: $r" >&2
        exit 1
    fi
    echo "\"cpu_us\": $(( (t1 - t0) * TICK_US )), \"run\": $r"
}
