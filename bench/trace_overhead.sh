#!/usr/bin/env bash
# What Triton's trace extension costs the gateway: throughput, p99 and server CPU per request of
# `palisade serve` (`process` audit durability) with tracing off, on at Triton's default rate
# (one request in 1000 traced) and on for every request (a trace file every 1000 traces), in
# one run. Each round starts one gateway and runs the three settings in a rotating order, each
# after a one-second warm-up; the figures are the medians of the rounds (server CPU per
# request), and `ratio` is the median throughput over that of tracing off.
# Usage: bash bench/trace_overhead.sh   (ROUNDS=3 SECONDS_PER_RUN=6 CONNS=16 PROFILE=release)
source "$(dirname "$0")/gateway_common.sh"
SECS=${SECONDS_PER_RUN:-6}
ROUNDS=${ROUNDS:-3}
C=${CONNS:-16}
OUT=$STATE/trace.jsonl
: > "$OUT"
# A change of the settings takes a TOTP code, and a key takes each code once: one admin key per
# change, made offline in the gateway's state folder.
change() { # PORT BODY
    local made
    made=$("$BIN" --json keys create --state "$STATE/gw" --name "trace-bench" --role admin)
    python3 - "$1" "$2" "$made" << 'PY'
import base64, hashlib, hmac, json, struct, sys, time, urllib.request
port, body, made = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
k = base64.b32decode(made["totp_secret"] + "=" * (-len(made["totp_secret"]) % 8))
d = hmac.new(k, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
o = d[-1] & 15
code = "%06d" % ((struct.unpack(">I", d[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)
req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/trace/setting", method="POST",
                             data=body.encode(), headers={"Authorization": f"Bearer {made['key']}",
                                                          "X-Palisade-TOTP": code})
json.load(urllib.request.urlopen(req))
PY
}
declare -A SETTING=(
    [off]='{"trace_level": ["OFF"]}'
    [rate1000]='{"trace_level": ["TIMESTAMPS"], "trace_rate": "1000", "log_frequency": "1000"}'
    [every]='{"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "1000"}'
)
ORDERS=("off rate1000 every" "rate1000 every off" "every off rate1000")
for ROUND in $(seq 1 "$ROUNDS"); do
    rm -rf "$STATE/gw" "$STATE/gw.out"
    unset AUTH
    P=$(free_port)
    start_gateway "$P" gw --audit-durability process
    URL="http://127.0.0.1:$P/v2/models/mnist/infer"
    for MODE in ${ORDERS[$(((ROUND - 1) % 3))]}; do
        change "$P" "${SETTING[$MODE]}"
        M=$(measure "$GW_PID" "$URL" "$C" "$SECS")
        echo "{\"round\": $ROUND, \"mode\": \"$MODE\", $M}" >> "$OUT"
    done
    TRACES=$(find "$STATE/gw/traces" -name 'trace.json.*' 2> /dev/null | wc -l)
    kill "$GW_PID"
    wait "$GW_PID" 2> /dev/null || true
    echo "round $ROUND: $TRACES trace files" >&2
done
python3 - "$OUT" "$C" << 'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda mode, f: statistics.median(f(r) for r in rows if r["mode"] == mode)
base = med("off", lambda r: r["run"]["rps"])
print(f"{'tracing':10} {'conns':>5} {'rps':>9} {'ratio':>6} {'p99':>9} {'cpu_us':>7}")
for mode in ["off", "rate1000", "every"]:
    rps = med(mode, lambda r: r["run"]["rps"])
    print(f"{mode:10} {sys.argv[2]:>5} {rps:9.1f} {rps / base:6.3f} "
          f"{med(mode, lambda r: r['run']['p99_ms']):7.3f}ms "
          f"{med(mode, lambda r: r['cpu_us'] / r['run']['requests']):6.0f}us")
PY
