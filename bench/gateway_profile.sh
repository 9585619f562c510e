#!/usr/bin/env bash
# Where the gateway's CPU goes per guard: `palisade serve` (the bench repository of
# gateway_common.sh) under wrk, sampled by perf with DWARF call graphs, each sample attributed to
# the innermost guard (or tract, hyper, axum, tokio) on its stack. Needs perf (linux-perf) and wrk.
# Also: the CPU per request of each kind of thread (async workers, inference threads, audit), the
# system calls per request by kind, and the scheduling delay per request by thread, each beside
# the bare endpoint's.
# Usage: bash bench/gateway_profile.sh   (CONNS=16 SECONDS_PER_RUN=6 FREQ=1500 DURABILITY=process
#        ROUNDS=3: runs of each server for the per-thread CPU)
source "$(dirname "$0")/gateway_common.sh"
command -v perf > /dev/null || { echo "perf is needed: apt-get install linux-perf" >&2; exit 2; }
C=${CONNS:-16}
SECS=${SECONDS_PER_RUN:-6}
P=$(free_port)
start_gateway "$P" gw --audit-durability "${DURABILITY:-process}"
URL="http://127.0.0.1:$P/v2/models/mnist/infer"
run_wrk "$URL" "$C" 2 > /dev/null # warm up
perf record -e cpu-clock -F "${FREQ:-1500}" --call-graph dwarf,16384 -p "$GW_PID" \
    -o "$STATE/gw.perf" -- sleep "$SECS" > /dev/null 2>&1 &
PERF=$!
RUN=$(run_wrk "$URL" "$C" "$SECS")
echo "$RUN"
wait "$PERF"
perf script -i "$STATE/gw.perf" 2> /dev/null | python3 -c '
import collections, re, sys
owners = [("tract", r"tract_|palisade_model::onnx"), ("audit", r"guard::audit::"),
          ("authn", r"guard::authn::"), ("authz", r"guard::authz::"),
          ("ratelimit", r"guard::ratelimit::"), ("validate", r"guard::validate::"),
          ("harden", r"guard::harden::"), ("infer service", r"palisade_gateway::infer::"),
          ("metrics", r"palisade_gateway::metrics::"), ("grpc", r"palisade_gateway::grpc"),
          ("axum routing", r"axum::"), ("hyper", r"hyper::"), ("tokio", r"tokio::")]
count, n = collections.Counter(), 0
for sample in sys.stdin.read().split("\n\n"):
    lines = sample.strip().split("\n")
    frames = lines[1:]
    if not frames:
        continue
    n += 1
    owner = next((o for f in frames for o, p in owners if re.search(p, f)), "other")
    count[owner] += 1
print(f"{n} samples; share of the gateway process CPU by innermost owner on the stack:")
for owner, c in count.most_common():
    print(f"  {100 * c / n:5.1f}%  {owner}")
'
# System calls per request, by kind, the gateway's beside the bare endpoint's (each over a run of
# its own): a system call the bare endpoint does not make is a cost of the guards that a CPU
# profile spreads thin over the kernel (the key cache's `PRAGMA data_version` showed up here as
# `fcntl` locks on the key database, 2026-12-05). Needs the syscalls tracepoints (root, or
# perf_event_paranoid <= -1).
syscalls_per_request() { # PID URL OUT: runs wrk on URL while counting PID's system calls
    perf stat -x, -e 'syscalls:sys_enter_*' -p "$1" -o "$STATE/sys.txt" -- sleep "$SECS" 2> /dev/null &
    local perf=$! run
    run=$(run_wrk "$2" "$C" "$SECS")
    wait "$perf"
    awk -F, -v n="$(field "$run" requests)" '$1 + 0 > 0 {sub("syscalls:sys_enter_", "", $3); printf "%s %.3f\n", $3, $1 / n}' "$STATE/sys.txt" > "$3"
}
BP=$(free_port)
start_bare "$BP"
BARE_URL="http://127.0.0.1:$BP/v2/models/mnist/infer"
# CPU per request of each kind of thread, from the kernel's per-thread counts (no perf attached,
# so nothing of its own is in them), the bare endpoint's beside the gateway's, alternating over
# ROUNDS runs each, medians. The async worker is where the guards run: it used 23 µs per request
# on the bare endpoint and 31 µs on the gateway at 16 connections, but 34 and 53 µs at 1
# connection, where each request finds it idle (2026-12-05); on another day of the same VM, 47.8
# and 67.8 µs at 16 connections, 81.7 and 152.4 µs at 1 (2026-12-07): compare the two servers
# within one run, not runs of different days. The CPU of a thread that starts or
# ends within a run (a blocking-pool thread, for bodies over 64 KiB) is not counted whole. The
# kernel keeps 15 characters of a thread name: palisade-infer-0 and -1 are both "palisade-infer-"
# (counted together), palisade-audit-wal is "palisade-audit-".
thread_ticks() { # PID -> lines "thread-name ticks", summed over threads of one name
    for t in /proc/"$1"/task/*; do
        echo "$(tr ' ' _ < "$t/comm") $(cpu_ticks "$1/task/${t##*/}")"
    done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
thread_cpu() { # PID URL OUT: appends "thread µs-per-request" lines for one run
    local before run
    run_wrk "$2" "$C" 1 > /dev/null
    before=$(thread_ticks "$1")
    run=$(run_wrk "$2" "$C" "$SECS")
    join <(echo "$before") <(thread_ticks "$1") |
        awk -v n="$(field "$run" requests)" -v tick="$TICK_US" '{print $1, ($3 - $2) * tick / n}' >> "$3"
}
: > "$STATE/thr-bare.txt"
: > "$STATE/thr-gw.txt"
for _ in $(seq 1 "${ROUNDS:-3}"); do
    AUTH= thread_cpu "$BARE_PID" "$BARE_URL" "$STATE/thr-bare.txt"
    thread_cpu "$GW_PID" "$URL" "$STATE/thr-gw.txt"
done
echo "CPU per request by thread, without perf (median of ${ROUNDS:-3} runs each):"
python3 - "$STATE/thr-bare.txt" "$STATE/thr-gw.txt" <<'PY'
import collections, statistics, sys
def load(path):
    runs = collections.defaultdict(list)
    for line in open(path):
        name, us = line.split()
        runs[name].append(float(us))
    return {k: statistics.median(v) for k, v in runs.items()}
bare, gw = load(sys.argv[1]), load(sys.argv[2])
print(f"  {'thread':<18} {'bare':>8} {'gateway':>8}")
for name in sorted(set(bare) | set(gw), key=lambda k: -max(bare.get(k, 0), gw.get(k, 0))):
    if max(bare.get(name, 0), gw.get(name, 0)) >= 0.05:
        print(f"  {name:<18} {bare.get(name, 0):6.1f}µs {gw.get(name, 0):6.1f}µs")
print(f"  {'all':<18} {sum(bare.values()):6.1f}µs {sum(gw.values()):6.1f}µs")
PY
if perf stat -x, -e syscalls:sys_enter_write -o /dev/null -- true 2> /dev/null; then
    AUTH= syscalls_per_request "$BARE_PID" "$BARE_URL" "$STATE/sys-bare.txt"
    syscalls_per_request "$GW_PID" "$URL" "$STATE/sys-gw.txt"
    echo "system calls per request:"
    python3 - "$STATE/sys-bare.txt" "$STATE/sys-gw.txt" <<'PY'
import sys
bare, gw = ({l.split()[0]: float(l.split()[1]) for l in open(f)} for f in sys.argv[1:])
print(f"  {'call':<16} {'bare':>8} {'gateway':>8}")
for name in sorted(set(bare) | set(gw), key=lambda k: -max(bare.get(k, 0), gw.get(k, 0)))[:15]:
    print(f"  {name:<16} {bare.get(name, 0):8.3f} {gw.get(name, 0):8.3f}")
PY
else
    echo "(no syscall tracepoints here: system calls per request left out)"
fi
# Scheduling delay: how long threads waited to run once woken (or preempted), per request, the
# bare endpoint's beside the gateway's, from `perf sched` (sched tracepoints: root). At one
# connection a request passes from wrk to the async worker, the inference thread, the worker again
# and back to wrk, and on a 2-vCPU VM whose idle vCPUs halt, each request's threads waited 54 µs
# in all on the bare endpoint and 58 µs on the gateway (worker 22.7 and 24.8, inference thread
# 19.5 and 19.7, wrk 12.2 and 13.5; 2026-12-05): a fifth of a request's time, that the guards
# barely add to and cannot hide. Waking the inference thread ahead, once a request had passed
# authorisation, so that its wait overlapped the rest of the guards, did not raise the gateway's
# throughput at one connection (4,048 req/s with it, 4,026 without; 0.924 and 0.931 of the bare
# endpoint; medians of 5 rounds of bench/gateway_ab.sh), and was dropped.
sched_delay() { # PID URL OUT: per thread kind, runs and µs of scheduling delay per request
    perf sched record -o "$STATE/sched.data" -- sleep "$SECS" > /dev/null 2>&1 &
    local perf=$! run
    run=$(run_wrk "$2" "$C" "$SECS")
    wait "$perf"
    perf sched timehist -i "$STATE/sched.data" 2> /dev/null |
        python3 -c '
import collections, re, sys
pid, n = sys.argv[1], int(sys.argv[2])
runs, delay = collections.Counter(), collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s*[\d.]+\s+\[\d+\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
    if not m:
        continue
    name, tgid = m.group(1), m.group(3) or m.group(2)
    kind = name if tgid == pid else "wrk" if name == "wrk" else None
    if kind:
        runs[kind] += 1
        delay[kind] += float(m.group(5)) * 1000
for kind in runs:
    print(kind.replace(" ", "_"), runs[kind] / n, delay[kind] / n)
' "$1" "$(field "$run" requests)" > "$3"
}
if perf sched record -o "$STATE/probe.data" -- true > /dev/null 2>&1; then
    AUTH= sched_delay "$BARE_PID" "$BARE_URL" "$STATE/sched-bare.txt"
    sched_delay "$GW_PID" "$URL" "$STATE/sched-gw.txt"
    echo "scheduling delay per request (runs, and µs waited to run), by thread:"
    python3 - "$STATE/sched-bare.txt" "$STATE/sched-gw.txt" <<'PY'
import sys
bare, gw = ({l.split()[0]: tuple(map(float, l.split()[1:])) for l in open(f)} for f in sys.argv[1:])
print(f"  {'thread':<18} {'bare runs':>9} {'bare wait':>10} {'gw runs':>8} {'gw wait':>9}")
for name in sorted(set(bare) | set(gw), key=lambda k: -max(bare.get(k, (0, 0))[1], gw.get(k, (0, 0))[1])):
    (br, bw), (gr, gw_) = bare.get(name, (0, 0)), gw.get(name, (0, 0))
    if max(bw, gw_) >= 0.1:
        print(f"  {name:<18} {br:9.2f} {bw:8.1f}µs {gr:8.2f} {gw_:7.1f}µs")
PY
else
    echo "(no sched tracepoints here: scheduling delay left out)"
fi
