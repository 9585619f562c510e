#!/usr/bin/env bash
# What sharing the limits costs: `palisade serve` counting its rate limits and daily budgets in
# its own process (the default) against counting them in a Redis server on the same machine
# (`--limits-redis`, over TCP loopback, over TLS on loopback (`rediss://`, a CA made here with
# openssl, left out without it) and over a Unix socket), at 1, 16 and 64 connections.
# Every round starts the gateways afresh and alternates their runs (reversed every other round);
# each figure is the median over rounds. `redis_cpu` is the Redis server's CPU per request: on a
# machine of its own it would not take the gateway's cores, here it does.
# The policy is bench/bench-policy.toml: all three limits set, none reached.
# On 2 vCPUs (AMD EPYC, Redis 7.0 on the same cores; 3 rounds of 6 s, 2026-12-05), against the
# local store: 0.73 (TCP) and 0.69 (Unix socket) of its throughput at 1 connection, where each
# request waits for the round trip (p99 0.56 -> 0.87 ms); 0.87 and 0.89 at 16; 0.88 and 0.85 at
# 64, with p99 within 1 ms of local. The gateway itself spent 4-14 µs more CPU per request at 16
# and 64 connections (45-57 at one) and Redis 18-20 (41-44 at one), which here came out of the
# same two cores. Over TLS (a later run, 3 rounds): 0.71 at 1 connection, 0.82 at 16 and 0.85 at
# 64, against 0.73, 0.87 and 0.88 over plain TCP in the same rounds; Redis spent 7-10 µs more
# per request on TLS, the gateway 0.5-4.
# Usage: bash bench/gateway_redis.sh   (SECONDS_PER_RUN=6 ROUNDS=3 CONNS_LIST="1 16 64");
#        needs redis-server (apt-get install redis-server) besides what gateway_common.sh needs.
command -v redis-server > /dev/null || { echo "redis-server is needed: apt-get install redis-server" >&2; exit 2; }
source "$(dirname "$0")/gateway_common.sh"
SECS=${SECONDS_PER_RUN:-6}
ROUNDS=${ROUNDS:-3}
CONNS_LIST=${CONNS_LIST:-1 16 64}
RPORT=$(free_port)
MODES="local redis-tcp redis-unix"
TLS_ARGS=()
if command -v openssl > /dev/null; then
    # A CA and a certificate for localhost, for the server's TLS port (clients are not asked for
    # one).
    TPORT=$(free_port)
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    echo "subjectAltName=DNS:localhost" > "$STATE/san.ext"
    {
        openssl req -x509 "${ec[@]}" -days 1 -subj "/CN=bench CA" \
            -keyout "$STATE/ca.key" -out "$STATE/ca.pem" &&
        openssl req "${ec[@]}" -subj "/CN=localhost" \
            -keyout "$STATE/redis.key" -out "$STATE/redis.csr" &&
        openssl x509 -req -in "$STATE/redis.csr" -CA "$STATE/ca.pem" -CAkey "$STATE/ca.key" \
            -CAcreateserial -days 1 -extfile "$STATE/san.ext" -out "$STATE/redis.pem"
    } > "$STATE/openssl.log" 2>&1 || { echo "openssl failed:" >&2; cat "$STATE/openssl.log" >&2; exit 1; }
    TLS_ARGS=(--tls-port "$TPORT" --tls-cert-file "$STATE/redis.pem"
        --tls-key-file "$STATE/redis.key" --tls-ca-cert-file "$STATE/ca.pem" --tls-auth-clients no)
    MODES="local redis-tcp redis-tls redis-unix"
else
    echo "# openssl not found: the TLS mode is left out"
fi
start_redis() {
    redis-server --port "$RPORT" --bind 127.0.0.1 --unixsocket "$STATE/redis.sock" --save "" \
        --appendonly no --dir "$STATE" "${TLS_ARGS[@]}" > "$STATE/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
        [ -S "$STATE/redis.sock" ] && return 0
        kill -0 "$REDIS_PID" 2> /dev/null || return 1
        sleep 0.1
    done
    return 1
}
if ! start_redis && [ ${#TLS_ARGS[@]} -gt 0 ]; then
    echo "# this redis-server does not take the TLS settings: the TLS mode is left out"
    TLS_ARGS=()
    MODES="local redis-tcp redis-unix"
    start_redis || true
fi
PIDS+=("$REDIS_PID")
[ -S "$STATE/redis.sock" ] || { echo "redis-server did not start" >&2; cat "$STATE/redis.log" >&2; exit 1; }
declare -A KEY
OUT=$STATE/redis.jsonl
for ROUND in $(seq 1 "$ROUNDS"); do
    declare -A URL=() PID=()
    for M in $MODES; do
        case $M in
            local) EXTRA=() ;;
            redis-tcp) EXTRA=(--limits-redis "redis://127.0.0.1:$RPORT" --limits-prefix "tcp:") ;;
            redis-tls) EXTRA=(--limits-redis "rediss://localhost:$TPORT"
                --limits-redis-ca "$STATE/ca.pem" --limits-prefix "tls:") ;;
            redis-unix) EXTRA=(--limits-redis "redis+unix://$STATE/redis.sock" --limits-prefix "unix:") ;;
        esac
        P=$(free_port)
        AUTH=${KEY[$M]:-}
        start_gateway "$P" "$M" --audit-durability process "${EXTRA[@]}"
        KEY[$M]=$AUTH
        unset AUTH
        PID[$M]=$GW_PID
        URL[$M]="http://127.0.0.1:$P/v2/models/mnist/infer"
    done
    ORDER=$MODES
    [ $((ROUND % 2)) = 0 ] && ORDER=$(echo "$MODES" | tr ' ' '\n' | tac | tr '\n' ' ')
    for C in $CONNS_LIST; do
        for M in $ORDER; do
            r0=$(cpu_ticks "$REDIS_PID")
            R=$(AUTH=${KEY[$M]} measure "${PID[$M]}" "${URL[$M]}" "$C" "$SECS")
            r1=$(cpu_ticks "$REDIS_PID")
            echo "{\"round\": $ROUND, \"mode\": \"$M\", \"conns\": $C, \"redis_cpu_us\": $(( (r1 - r0) * TICK_US )), $R}" >> "$OUT"
        done
    done
    for M in $MODES; do kill "${PID[$M]}"; wait "${PID[$M]}" 2> /dev/null || true; done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'mode':<11} {'conns':>5} {'req/s':>8} {'vs local':>8} {'p99_ms':>7} {'gw_cpu_us':>9} {'redis_cpu_us':>12}")
for c in sorted({r["conns"] for r in rows}):
    med = lambda m, f: statistics.median(f(r) for r in rows if r["mode"] == m and r["conns"] == c)
    base = med("local", lambda r: r["run"]["rps"])
    modes = ("local", "redis-tcp", "redis-tls", "redis-unix")
    for m in [m for m in modes if any(r["mode"] == m for r in rows)]:
        rps = med(m, lambda r: r["run"]["rps"])
        print(f"{m:<11} {c:>5} {rps:>8.0f} {rps / base:>8.3f} {med(m, lambda r: r['run']['p99_ms']):>7.2f}"
              f" {med(m, lambda r: r['cpu_us'] / r['run']['requests']):>9.1f}"
              f" {med(m, lambda r: r['redis_cpu_us'] / r['run']['requests']):>12.1f}")
PY
