#!/usr/bin/env bash
# What the guard chain costs per request, counted in instructions rather than timed: each build's
# bare endpoint and gateway (`process` durability) run under callgrind, one client sends N
# requests one at a time over one keep-alive connection after a warm-up, and the count covers the
# whole server process (every thread: the guards, the inference thread, the audit log's ingester)
# for exactly those N requests. Instruction counts do not move with what else the machine runs,
# so two builds can be compared on a noisy VM where the bare endpoint alone ran at 1,565 to 2,343 req/s between runs (2026-12-03)
# (gateway_vs_bare.sh and gateway_ab.sh time the real thing; this counts the work).
# Caveat: under valgrind the sha2 crate falls back to its software SHA-256 (no SHA-NI), so the
# guards' hashing (input and output digests, key hash, Merkle leaves) counts ~200k instructions
# per request that take ~3 µs natively; compare builds, not the absolute guard share.
# Needs valgrind. Slow: two builds at N=1500 took 19 minutes on a 2-vCPU VM (N=50: 1.5 minutes for one).
# Usage: VARIANTS="before=DIR after=DIR" N=1500 bash bench/gateway_instructions.sh
#   (each DIR holds a build's `palisade`, whose `bench-endpoint` is the bare one; default: this
#   checkout's target/release). Build another revision with its own CARGO_TARGET_DIR: a worktree
#   built into this checkout's target folder leaves artifacts that cargo, whose fingerprints do
#   not name the checkout, then takes as up to date for this one.
source "$(dirname "$0")/gateway_common.sh"
command -v valgrind > /dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 2; }
[ -n "${VARIANTS:-}" ] || VARIANTS="this=$TDIR"
N=${N:-1500}
bare_of() { echo "$1/palisade"; }
client() { # PORT N AUTH: N requests, one at a time, on one connection
python3 - "$1" "$2" "$3" <<'PY'
import http.client, os, sys
port, n, auth = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = open(os.environ["BODY"], "rb").read()
h = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": os.environ["HLEN"]}
if auth: h["Authorization"] = auth
c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
for i in range(n):
    c.request("POST", "/v2/models/mnist/infer", body, h)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
for V in $VARIANTS; do
  name=${V%%=*}; dir=${V#*=}
  for mode in bare gw; do
    P=$(free_port)
    if [ $mode = bare ]; then
      valgrind --tool=callgrind --callgrind-out-file=$STATE/cg.$name.$mode.%p "$(bare_of "$dir")" bench-endpoint --model models/mnist_cnn_public.onnx --listen "127.0.0.1:$P" 2>>$STATE/vg.log &
      PID=$!; A=
      for _ in $(seq 1 600); do curl -fs -o /dev/null -H "Inference-Header-Content-Length: $HLEN" --data-binary @"$BODY" "http://127.0.0.1:$P/v2/models/mnist/infer" && break; sleep 0.5; done
    else
      P0=$(free_port); unset AUTH; BIN="$dir/palisade" start_gateway "$P0" "cg_$name"; kill $GW_PID; wait $GW_PID 2>/dev/null || true
      A=$AUTH
      valgrind --tool=callgrind --callgrind-out-file=$STATE/cg.$name.$mode.%p "$dir/palisade" --json serve --models "$REPO" --trusted-key "$STATE/bench.pub" --state "$STATE/cg_$name" --listen "127.0.0.1:$P" --grpc-listen "127.0.0.1:$P" --audit-durability process > /dev/null 2>>$STATE/vg.log &
      PID=$!
      for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$P/v2/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    client $P 200 "$A"   # warm-up
    callgrind_control --zero $PID > /dev/null
    client $P $N "$A"
    callgrind_control --dump $PID > /dev/null
    sleep 1
    kill $PID; wait $PID 2>/dev/null || true
    TOT=$(grep -m1 '^summary:' $STATE/cg.$name.$mode.$PID.1 | awk '{print $2}')
    echo "$name $mode instructions/request: $((TOT / N))"
    [ $mode = bare ] && PER_BARE=$((TOT / N)) || echo "$name guard chain (gateway - bare): $((TOT / N - PER_BARE))"
  done
done
