#!/usr/bin/env bash
# temp: who wakes whom, per request, bare vs gateway (process durability), under wrk -c$C
source "$(dirname "$0")/gateway_common.sh"
C=${CONNS:-16}
BP=$(free_port)
"$BARE" models/mnist_cnn_public.onnx "127.0.0.1:$BP" 2>> "$STATE/bare.log" &
PID_BARE=$!; PIDS+=("$PID_BARE")
PP=$(free_port)
start_gateway "$PP" process --audit-durability process
sleep 1
for MODE in bare gw; do
  if [ $MODE = bare ]; then URL="http://127.0.0.1:$BP/v2/models/mnist/infer"; A=; P=$PID_BARE; else URL="http://127.0.0.1:$PP/v2/models/mnist/infer"; A=$AUTH; P=$GW_PID; fi
  AUTH=$A run_wrk "$URL" "$C" 2 > /dev/null
  perf record -e sched:sched_waking -e syscalls:sys_enter_futex -e sched:sched_switch --call-graph dwarf,8192 -p "$P" -o /tmp/wk_$MODE.perf -- sleep 4 > /dev/null 2>&1 &
  PERF=$!
  R=$(AUTH=$A run_wrk "$URL" "$C" 4)
  wait $PERF
  echo "$MODE $R"
done
