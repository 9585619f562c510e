#!/usr/bin/env bash
# Added latency of the guard chain at a fixed request rate (open loop), the other half of the
# issue's goal (<= 1 ms added p99) measured without the queueing that a closed-loop client
# (wrk, in gateway_vs_bare.sh) builds at 16 and 64 connections. The bare endpoint and `palisade
# serve` (`process` audit durability) get the same schedule: request i due i / RATE seconds
# after the start, on connection i mod CONNS, its latency counted from when it was due
# (examples/open_loop.rs), so a server that falls behind is charged for the requests it held
# back. The rate is below both servers' capacity, so what is measured is the time a request
# takes, not how long it queued behind the others.
# Usage: bash bench/gateway_latency.sh   (SECONDS_PER_RUN=10 ROUNDS=4 CONNS_LIST="1 16 64"
#        RATES="1000 3000 3000": requests per second, one per connection count)
source "$(dirname "$0")/gateway_common.sh"
cargo build -q --profile "$PROFILE" -p palisade-gateway --example open_loop
LOAD=$TDIR/examples/open_loop
SECS=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-4}
CONNS_LIST=(${CONNS_LIST:-1 16 64})
RATES=(${RATES:-1000 3000 3000})
[ "${#RATES[@]}" = "${#CONNS_LIST[@]}" ] || { echo "RATES needs one rate per entry of CONNS_LIST" >&2; exit 2; }
: > "$STATE/latency.jsonl"
for ROUND in $(seq 1 "$ROUNDS"); do
    BP=$(free_port); start_bare "$BP"; PB=$BARE_PID
    GP=$(free_port); unset AUTH; start_gateway "$GP" "gw-$ROUND" --audit-durability process; PG=$GW_PID
    for k in "${!CONNS_LIST[@]}"; do
        C=${CONNS_LIST[$k]} R=${RATES[$k]}
        # Alternating which goes first from round to round.
        ORDER="bare process"; [ $((ROUND % 2)) = 0 ] && ORDER="process bare"
        for MODE in $ORDER; do
            if [ "$MODE" = bare ]; then URL="http://127.0.0.1:$BP/v2/models/mnist/infer" H=(); else
                URL="http://127.0.0.1:$GP/v2/models/mnist/infer" H=("Authorization: $AUTH"); fi
            HDRS=("Content-Type: application/octet-stream" "Inference-Header-Content-Length: $HLEN" "${H[@]}")
            "$LOAD" "$URL" "$R" 1 "$C" "$BODY" "${HDRS[@]}" > /dev/null # warm-up
            OUT=$("$LOAD" "$URL" "$R" "$SECS" "$C" "$BODY" "${HDRS[@]}")
            if [ "$(field "$OUT" non2xx)" != 0 ] || [ "$(field "$OUT" errors)" != 0 ]; then
                echo "error: $URL answered non-2xx or failed, the run is void: $OUT" >&2
                exit 1
            fi
            echo "{\"round\": $ROUND, \"conns\": $C, \"mode\": \"$MODE\", \"run\": $OUT}" >> "$STATE/latency.jsonl"
        done
    done
    kill "$PB" "$PG" 2> /dev/null || true
    wait "$PB" "$PG" 2> /dev/null || true
done
python3 - "$STATE/latency.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'conns':<5} {'rate':>6} {'bare_p50':>9} {'guard_p50':>9} {'bare_p99':>9} {'guard_p99':>9} {'added_p99':>9} {'range':>15} {'guard_p999':>10}")
for c in sorted({r["conns"] for r in rows}):
    sel = lambda m: [r for r in rows if r["conns"] == c and r["mode"] == m]
    med = lambda m, k: statistics.median(r["run"][k] for r in sel(m))
    bare = {r["round"]: r["run"]["p99_ms"] for r in sel("bare")}
    added = [r["run"]["p99_ms"] - bare[r["round"]] for r in sel("process")]
    rate = sel("bare")[0]["run"]["rate"]
    print(f"{c:<5} {rate:6.0f} {med('bare','p50_ms'):7.3f}ms {med('process','p50_ms'):7.3f}ms"
          f" {med('bare','p99_ms'):7.3f}ms {med('process','p99_ms'):7.3f}ms"
          f" {med('process','p99_ms') - med('bare','p99_ms'):7.3f}ms"
          f" {min(added):6.3f}..{max(added):6.3f}ms {med('process','p999_ms'):8.3f}ms")
PY
