#!/usr/bin/env bash
# A/B of two or more builds of the gateway benchmark's servers, for telling a change from this
# machine's noise: each build is a pair (bare endpoint, `palisade`), and every round starts all
# pairs afresh and runs them in a shuffled order, so the builds share the round's conditions.
# For each build: the median throughput, p99 and server CPU per request of its bare endpoint and
# of its gateway (`process` audit durability), and its gateway/bare ratio per round.
#
# Usage: VARIANTS="before=DIR_A after=DIR_B" bash bench/gateway_ab.sh
#   where each DIR holds `palisade` built from one revision (its hidden `bench-endpoint` is the
#   bare endpoint), e.g.
#   cargo build --release -p palisade-cli && mkdir -p /tmp/ab/after && cp target/release/palisade /tmp/ab/after/
#   (ROUNDS=4 SECONDS_PER_RUN=6 CONNS_LIST="1 16 64")
#
# Code layout moves these figures as much as a change does. Two builds whose request paths did
# the same work (37e1e01 and 19980ea; guard_chain's guards_minus_bare 21.5-23.7 and 20.6-23.3 µs
# over three invocations each) differed by 17-26 µs of gateway CPU per request, 0.954 against
# 0.877 of the bare endpoint at 16 connections (4 rounds, 2026-12-06). perf put the difference
# in tract's im2col (Patcher::valid_2d, 26 against 33 µs per request), the same machine code at
# another address. Built with RUSTFLAGS="-C llvm-args=-align-loops=64", the two builds differed
# by 12 µs (3 rounds). Compare a change across more than one pair of builds before believing it.
source "$(dirname "$0")/gateway_common.sh"
[ -n "${VARIANTS:-}" ] || { echo "set VARIANTS=\"NAME=DIR ...\" (see the header)" >&2; exit 2; }
for V in $VARIANTS; do
    D=${V#*=}
    [ -x "$D/palisade" ] || {
        echo "$D must hold the executable palisade" >&2
        exit 2
    }
done
SECS=${SECONDS_PER_RUN:-6}
ROUNDS=${ROUNDS:-4}
CONNS_LIST=${CONNS_LIST:-1 16 64}
OUT=$STATE/ab.jsonl
declare -A KEY # each build's gateway keeps its state folder, and so its admin key, across rounds
for ROUND in $(seq 1 "$ROUNDS"); do
    declare -A URL=() PID=() AUTHS=()
    for V in $VARIANTS; do
        N=${V%%=*} D=${V#*=}
        P=$(free_port)
        start_bare "$P" "$D/palisade"
        PID[bare/$N]=$BARE_PID
        URL[bare/$N]="http://127.0.0.1:$P/v2/models/mnist/infer"
        AUTHS[bare/$N]=""
        P=$(free_port)
        AUTH=${KEY[$N]:-}
        BIN=$D/palisade start_gateway "$P" "gw-$N" --audit-durability process
        KEY[$N]=$AUTH
        unset AUTH
        PID[gateway/$N]=$GW_PID
        URL[gateway/$N]="http://127.0.0.1:$P/v2/models/mnist/infer"
        AUTHS[gateway/$N]=${KEY[$N]}
    done
    ORDER=$(printf '%s\n' "${!URL[@]}" | shuf)
    for C in $CONNS_LIST; do
        for K in $ORDER; do
            M=$(AUTH=${AUTHS[$K]} measure "${PID[$K]}" "${URL[$K]}" "$C" "$SECS")
            echo "{\"round\": $ROUND, \"conns\": $C, \"server\": \"${K%%/*}\", \"build\": \"${K#*/}\", $M}" >> "$OUT"
        done
    done
    kill "${PID[@]}" 2> /dev/null || true
    wait "${PID[@]}" 2> /dev/null || true
    unset URL PID AUTHS
done
python3 - "$OUT" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(dict)
for r in rows:
    by[(r["conns"], r["build"], r["round"])][r["server"]] = r
print(f"{'conns':<6}{'build':<12}{'bare_rps':>10}{'gw_rps':>10}{'ratio':>8}  {'ratio per round':<34}"
      f"{'bare_p99':>10}{'gw_p99':>10}{'bare_cpu':>10}{'gw_cpu':>9}")
for c in sorted({r["conns"] for r in rows}):
    for b in sorted({r["build"] for r in rows}):
        rounds = [by[(c, b, n)] for n in sorted({r["round"] for r in rows}) if (c, b, n) in by]
        med = lambda s, f: statistics.median(f(x[s]) for x in rounds)
        rps = lambda s: med(s, lambda r: r["run"]["rps"])
        p99 = lambda s: med(s, lambda r: r["run"]["p99_ms"])
        cpu = lambda s: med(s, lambda r: r["cpu_us"] / r["run"]["requests"])
        per = [x["gateway"]["run"]["rps"] / x["bare"]["run"]["rps"] for x in rounds]
        print(f"{c:<6}{b:<12}{rps('bare'):10.1f}{rps('gateway'):10.1f}{statistics.median(per):8.3f}  "
              f"{' '.join(f'{p:.3f}' for p in per):<34}{p99('bare'):8.2f}ms{p99('gateway'):8.2f}ms"
              f"{cpu('bare'):8.0f}us{cpu('gateway'):7.0f}us")
PY
