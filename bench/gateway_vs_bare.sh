#!/usr/bin/env bash
# Bare tract inference behind a plain endpoint (examples/bare_endpoint.rs: same runtime, same
# OIP codec, no guards) vs `palisade serve` with the full guard chain (authenticate, authorise,
# rate limit, validate, harden, durable audit, metrics), at 1, 16 and 64 connections, in one run.
# Usage: bash bench/gateway_vs_bare.sh   (SECONDS_PER_RUN=10 PROFILE=release)
source "$(dirname "$0")/gateway_common.sh"
SECS=${SECONDS_PER_RUN:-10}
BP=$(free_port)
"$BARE" models/mnist_cnn_public.onnx "127.0.0.1:$BP" 2>> "$STATE/bare.log" &
PIDS+=("$!")
GP=$(free_port)
start_gateway "$GP"
# The bare endpoint has no health route: wait until it answers an infer.
for _ in $(seq 1 100); do
    curl -fs -o /dev/null -H "Inference-Header-Content-Length: $HLEN" --data-binary @"$BODY" \
        "http://127.0.0.1:$BP/v2/models/mnist/infer" && break
    sleep 0.1
done
printf "%-5s %12s %12s %8s %10s %10s %10s\n" conns bare_rps guard_rps ratio bare_p99 guard_p99 added_p99
for C in 1 16 64; do
    B=$(AUTH= run_wrk "http://127.0.0.1:$BP/v2/models/mnist/infer" "$C" "$SECS")
    G=$(run_wrk "http://127.0.0.1:$GP/v2/models/mnist/infer" "$C" "$SECS")
    [ "$(field "$G" non2xx)" = 0 ] || echo "warning: the gateway answered non-2xx: $G"
    python3 - "$C" "$B" "$G" <<'PY'
import json, sys
c, b, g = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"{c:<5} {b['rps']:12.1f} {g['rps']:12.1f} {g['rps'] / b['rps']:8.3f} "
      f"{b['p99_ms']:8.3f}ms {g['p99_ms']:8.3f}ms {g['p99_ms'] - b['p99_ms']:8.3f}ms")
PY
done
