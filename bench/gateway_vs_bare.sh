#!/usr/bin/env bash
# Bare tract inference behind a plain endpoint (examples/bare_endpoint.rs: same runtime, same
# OIP codec, no guards) vs `palisade serve` with the full guard chain (authenticate, authorise,
# rate limit, validate, harden, audit, metrics), at 1, 16 and 64 connections, in one run.
# The gateway runs twice, once per audit durability: `full` (fsync before each answer) and
# `process` (survives kill -9 of the gateway, not a power cut).
# Usage: bash bench/gateway_vs_bare.sh   (SECONDS_PER_RUN=10 PROFILE=release)
source "$(dirname "$0")/gateway_common.sh"
SECS=${SECONDS_PER_RUN:-10}
BP=$(free_port)
"$BARE" models/mnist_cnn_public.onnx "127.0.0.1:$BP" 2>> "$STATE/bare.log" &
PIDS+=("$!")
FP=$(free_port)
start_gateway "$FP" full --audit-durability full
AUTH_FULL=$AUTH
unset AUTH
PP=$(free_port)
start_gateway "$PP" process --audit-durability process
AUTH_PROCESS=$AUTH
# The bare endpoint has no health route: wait until it answers an infer.
for _ in $(seq 1 100); do
    curl -fs -o /dev/null -H "Inference-Header-Content-Length: $HLEN" --data-binary @"$BODY" \
        "http://127.0.0.1:$BP/v2/models/mnist/infer" && break
    sleep 0.1
done
printf "%-8s %-5s %10s %10s %7s %10s %10s %10s\n" audit conns bare_rps guard_rps ratio bare_p99 guard_p99 added_p99
for C in 1 16 64; do
    B=$(AUTH= run_wrk "http://127.0.0.1:$BP/v2/models/mnist/infer" "$C" "$SECS")
    for MODE in full process; do
        if [ "$MODE" = full ]; then PORT=$FP A=$AUTH_FULL; else PORT=$PP A=$AUTH_PROCESS; fi
        G=$(AUTH=$A run_wrk "http://127.0.0.1:$PORT/v2/models/mnist/infer" "$C" "$SECS")
        [ "$(field "$G" non2xx)" = 0 ] || echo "warning: the gateway answered non-2xx: $G"
        python3 - "$MODE" "$C" "$B" "$G" <<'PY'
import json, sys
m, c, b, g = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(f"{m:<8} {c:<5} {b['rps']:10.1f} {g['rps']:10.1f} {g['rps'] / b['rps']:7.3f} "
      f"{b['p99_ms']:8.3f}ms {g['p99_ms']:8.3f}ms {g['p99_ms'] - b['p99_ms']:8.3f}ms")
PY
    done
done
