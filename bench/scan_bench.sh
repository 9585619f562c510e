#!/usr/bin/env bash
# Speed and memory of `palisade scan` (and, on the corpus, of the standalone `palisade-scan`)
# against picklescan 1.0.5 and modelscan 0.8.8, in one run:
#   1. the shared corpus (../shared/data/scan-corpus, both halves),
#   2. a generated 1 GiB safetensors file,
#   3. a generated 512 MiB PyTorch zip checkpoint (64 tensors of 8 MiB, written by hand).
# Each tool runs under /usr/bin/time -v: wall time and peak RSS. Ratios are the anchor's wall time
# over palisade's (higher is better for palisade). The Python tools are installed from PyPI into
# bench/.venv-scan (git-ignored); the big files go to ${BENCH_TMP:-/tmp/palisade-scan-bench}.
#
# Usage: bench/scan_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=../shared/data/scan-corpus
TMP=${BENCH_TMP:-/tmp/palisade-scan-bench}
VENV=bench/.venv-scan
mkdir -p "$TMP"

cargo build --release -q -p palisade-cli -p palisade-scan-cli
PAL=target/release/palisade
# The standalone scanner (same library, same report, no ML runtime linked in).
PALSCAN=target/release/palisade-scan

if [[ ! -x $VENV/bin/picklescan || ! -x $VENV/bin/modelscan ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q picklescan==1.0.5 modelscan==0.8.8
fi

"$VENV/bin/python" - "$TMP" <<'PY'
import json, os, struct, sys, zipfile
tmp = sys.argv[1]
# 1 GiB safetensors: 64 F32 tensors of 16 MiB, header parsed only.
st = os.path.join(tmp, "big.safetensors")
if not os.path.exists(st) or os.path.getsize(st) < 1 << 30:
    n, size = 64, 16 << 20
    header = {f"t{i}": {"dtype": "F32", "shape": [size // 4], "data_offsets": [i * size, (i + 1) * size]} for i in range(n)}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    chunk = os.urandom(1 << 20)
    with open(st, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _ in range(n * size // len(chunk)):
            f.write(chunk)
# 512 MiB PyTorch zip: data.pkl (a protocol-2 state dict of 64 tensors) + 64 storages of 8 MiB.
pt = os.path.join(tmp, "big.pt")
if not os.path.exists(pt) or os.path.getsize(pt) < 512 << 20:
    n, size = 64, 8 << 20
    def u(s):
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b
    p = bytearray(b"\x80\x02ccollections\nOrderedDict\n)R(")
    for i in range(n):
        p += u(f"layer{i}.weight") + b"ctorch._utils\n_rebuild_tensor_v2\n(("
        p += u("storage") + b"ctorch\nFloatStorage\n" + u(str(i)) + u("cpu") + b"J" + struct.pack("<i", size // 4) + b"tQ"
        p += b"K\x00J" + struct.pack("<i", size // 4) + b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR"
    p += b"u."
    chunk = os.urandom(size)
    with zipfile.ZipFile(pt, "w", zipfile.ZIP_STORED) as z:
        z.writestr("big/data.pkl", bytes(p))
        z.writestr("big/byteorder", "little")
        for i in range(n):
            z.writestr(f"big/data/{i}", chunk)
        z.writestr("big/version", "3\n")
PY

measure() { # runs, label, command...: median wall time and largest peak RSS over the runs
  # Wall time: the command run directly between two readings of bash's microsecond clock (no
  # time(1) process in between, whose own start would weigh on a 15 ms command and not on a
  # 300 ms one). CPU time and peak RSS: separate runs under time(1).
  local runs=$1 label=$2; shift 2
  local log walls=() cpus=() rss=0 rc=0 w r c t0
  log=$(mktemp)
  for ((i = 0; i < runs; i++)); do
    t0=$EPOCHREALTIME
    set +e
    "$@" > /dev/null 2>&1
    rc=$?
    set -e
    w=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f", b - a }')
    walls+=("$w")
    set +e
    /usr/bin/time -v "$@" > /dev/null 2> "$log"
    set -e
    r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    c=$(awk -F': ' '/User time \(seconds\)/ {u=$2} /System time \(seconds\)/ {s=$2} END {print u + s}' "$log")
    cpus+=("$c")
    ((r > rss)) && rss=$r
  done
  rm -f "$log"
  local median cpu
  median=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  cpu=$(printf '%s\n' "${cpus[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '%-24s wall %8.4f s  cpu %6.2f s (medians of %d)  peak RSS %8d KiB  exit %d\n' "$label" "$median" "$cpu" "$runs" "$rss" "$rc"
  echo "$median" > "$TMP/$label.wall"
  echo "$cpu" > "$TMP/$label.cpu"
}

ratio() { # anchor, palisade: wall-time ratio, and CPU-time ratio (user + sys; time(1) counts
  # CPU in 10 ms steps, so a palisade CPU time of 0 is taken as 0.01 s: the ratio is then a floor)
  awk -v a="$(cat "$TMP/$1.wall")" -v p="$(cat "$TMP/$2.wall")" -v ac="$(cat "$TMP/$1.cpu")" -v pc="$(cat "$TMP/$2.cpu")" \
    'BEGIN { if (pc < 0.01) pc = 0.01; printf "%-48s wall %6.1fx   cpu %6.1fx\n", "'"$1"' / '"$2"'", a / p, ac / pc }'
}

echo "== corpus ($CORPUS)"
measure 15 palisade-corpus "$PAL" scan --json "$CORPUS"
measure 15 palisade-scan-corpus "$PALSCAN" --json "$CORPUS"
measure 15 picklescan-corpus "$VENV/bin/picklescan" --path "$CORPUS"
measure 15 modelscan-corpus "$VENV/bin/modelscan" -p "$CORPUS"
echo "== 1 GiB safetensors"
measure 3 palisade-safetensors "$PAL" scan --json "$TMP/big.safetensors"
measure 3 palisade-nohash-st "$PAL" scan --json --no-hash "$TMP/big.safetensors"
measure 3 picklescan-safetensors "$VENV/bin/picklescan" --path "$TMP/big.safetensors"
measure 3 modelscan-safetensors "$VENV/bin/modelscan" -p "$TMP/big.safetensors"
echo "== 512 MiB PyTorch zip"
measure 3 palisade-torchzip "$PAL" scan --json "$TMP/big.pt"
measure 3 palisade-nohash-pt "$PAL" scan --json --no-hash "$TMP/big.pt"
measure 3 picklescan-torchzip "$VENV/bin/picklescan" --path "$TMP/big.pt"
measure 3 modelscan-torchzip "$VENV/bin/modelscan" -p "$TMP/big.pt"
echo "== wall-time ratios (anchor / palisade; palisade also hashes every byte with SHA-256 for its proof token)"
ratio picklescan-corpus palisade-corpus
ratio modelscan-corpus palisade-corpus
ratio picklescan-corpus palisade-scan-corpus
ratio modelscan-corpus palisade-scan-corpus
ratio picklescan-safetensors palisade-safetensors
ratio modelscan-safetensors palisade-safetensors
ratio picklescan-safetensors palisade-nohash-st
ratio modelscan-safetensors palisade-nohash-st
ratio picklescan-torchzip palisade-torchzip
ratio modelscan-torchzip palisade-torchzip
ratio picklescan-torchzip palisade-nohash-pt
ratio modelscan-torchzip palisade-nohash-pt
