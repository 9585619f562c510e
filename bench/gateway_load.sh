#!/usr/bin/env bash
# Load and fault test of `palisade serve` (bundled MNIST model, binary OIP requests, loopback):
#  1. 64 connections for 60 s: zero 5xx (zero non-2xx), the live log verifies halfway through,
#     and audit entries >= requests the gateway answered (its own /metrics) >= responses wrk
#     received;
#  2. kill -9 under load (64 connections); `palisade audit verify` on the killed state, then
#     restart on the same state: `palisade audit verify` passes and the log holds at least
#     every response wrk received (no acknowledged request lost).
# Usage: bash bench/gateway_load.sh   (DURATION=60 CONNS=64 PROFILE=release
#        SERVE_ARGS="--audit-durability process")
source "$(dirname "$0")/gateway_common.sh"
DURATION=${DURATION:-60}
CONNS=${CONNS:-64}
PORT=$(free_port)
URL="http://127.0.0.1:$PORT/v2/models/mnist/infer"
start_gateway "$PORT" gw ${SERVE_ARGS:-}

echo "== $CONNS connections for $DURATION s"
run_wrk "$URL" "$CONNS" "$DURATION" > "$STATE/wrk1.json" &
WRK=$!
# Halfway through, the live log verifies offline (under load, while entries are being written
# and, with `process` durability, journal files copied in and deleted).
sleep $(( DURATION / 2 ))
"$BIN" audit verify --state "$STATE/gw" > "$STATE/live-verify.txt" \
    || { cat "$STATE/live-verify.txt"; echo "FAIL: the live log does not verify under load"; exit 1; }
echo "live log under load: $(head -1 "$STATE/live-verify.txt")"
wait "$WRK"
R1=$(cat "$STATE/wrk1.json")
echo "$R1"
sleep 1
E1=$(audit_entries)
S1=$(served_infers "$PORT")
echo "answered by wrk: $(field "$R1" requests); served (metrics): $S1; audit entries: $E1"
[ "$(field "$R1" non2xx)" = 0 ] || { echo "FAIL: non-2xx responses"; exit 1; }
# Every answered request has its entry. A request whose entry was written but whose connection
# wrk closed at the end of the run (so no response was counted) adds an entry: at most one per
# connection.
if [ "$E1" -lt "$S1" ] || [ "$E1" -gt $((S1 + CONNS)) ]; then
    echo "FAIL: audit entries $E1 vs served $S1 (expected between $S1 and $((S1 + CONNS)))"; exit 1
fi
[ "$E1" -ge "$(field "$R1" requests)" ] || { echo "FAIL: fewer entries than responses"; exit 1; }

echo "== kill -9 under load"
run_wrk "$URL" "$CONNS" 12 > "$STATE/wrk2.json" &
WRK=$!
sleep 6
kill -9 "$GW_PID"
wait "$WRK" || true
R2=$(cat "$STATE/wrk2.json")
echo "$R2"
ACK=$(( E1 + $(field "$R2" requests) ))
# Offline, before any restart: the verifier reads what the killed gateway left (with `process`
# durability, the append journal beside the database holds entries not yet copied in).
E_KILLED=$(audit_entries)
echo "entries in the killed gateway's state: $E_KILLED; acknowledged so far: $ACK"
[ "$E_KILLED" -ge "$ACK" ] || { echo "FAIL: $(( ACK - E_KILLED )) acknowledged requests missing before restart"; exit 1; }
start_gateway "$PORT" gw ${SERVE_ARGS:-}
E2=$(audit_entries)
echo "entries after restart: $E2; acknowledged so far: $ACK"
"$BIN" audit verify --state "$STATE/gw"
[ "$E2" -ge "$ACK" ] || { echo "FAIL: $(( ACK - E2 )) acknowledged requests missing from the audit log"; exit 1; }
kill -TERM "$GW_PID"; wait "$GW_PID" || true
"$BIN" audit verify --state "$STATE/gw" > /dev/null
echo "OK: zero non-2xx, every served request audited, kill -9 lost no acknowledged entry, the log verifies"
