#!/usr/bin/env bash
# Hash-and-sign a 1 GiB model directory with model-signing 1.1.1 (PyPI, the reference) and with
# `palisade sign`, in one run, on the same files and key; sha256 (both CLIs) and blake3
# (model-signing through its Python API, which is the only way it offers blake3).
#
#   bash bench/sign_bench.sh                 # 4 x 256 MiB safetensors-like files + config.json
#   FILES=1 bash bench/sign_bench.sh         # one 1 GiB file
#   RUNS=5 bash bench/sign_bench.sh
#
# Reports the median wall time of RUNS runs (after one warm-up run each, so the page cache is
# warm for both), the throughput and the ratio model-signing / palisade. Each signature is
# verified by the other tool once, so the timings are of interoperable signatures.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
FILES=${FILES:-4}
TOTAL_MIB=${TOTAL_MIB:-1024}
VENV=bench/.venv-oms
if [ ! -x "$VENV/bin/model_signing" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "model-signing==1.1.1" pyopenssl
fi
cargo build --release -q -p palisade-cli
P=target/release/palisade
W=${BENCH_DIR:-$(mktemp -d)}
trap 'rm -rf "$W"' EXIT
M=$W/model
mkdir -p "$M"
per=$((TOTAL_MIB / FILES))
for i in $(seq 1 "$FILES"); do
  head -c $((per * 1024 * 1024)) /dev/urandom > "$M/model-0000$i-of-0000$FILES.safetensors"
done
echo '{"architectures":["Bench"],"hidden_size":4096}' > "$M/config.json"
"$P" keygen --private-key "$W/k.pem" --public-key "$W/k.pub" >/dev/null

cat > "$W/ms_sign.py" <<'PY'
import sys, model_signing
model, key, sig, algo = sys.argv[1:5]
(model_signing.signing.Config()
   .use_elliptic_key_signer(private_key=key)
   .set_hashing_config(model_signing.hashing.Config().use_file_serialization(hashing_algorithm=algo))
   .sign(model, sig))
PY
# model-signing 1.1.1's CLI verifies with sha256 whatever the bundle's hash_type says, so a blake3
# signature is cross-checked through its API with the hashing configured.
cat > "$W/ms_verify.py" <<'PY'
import sys, model_signing
model, pub, sig, algo = sys.argv[1:5]
(model_signing.verifying.Config()
   .use_elliptic_key_verifier(public_key=pub)
   .set_hashing_config(model_signing.hashing.Config().use_file_serialization(hashing_algorithm=algo))
   .verify(model, sig))
PY

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Runs "$@" RUNS times after a warm-up; prints "median_wall median_cpu" (cpu = user + sys), seconds.
# CPU time is reported too because this machine is shared: wall time depends on the load.
time_cmd() {
  "$@" >/dev/null 2>&1
  local f; f=$(mktemp)
  for _ in $(seq 1 "$RUNS"); do
    /usr/bin/time -o "$f" -a -f '%e %U %S' "$@" >/dev/null 2>&1
  done
  echo "$(awk '{print $1}' "$f" | median) $(awk '{print $2 + $3}' "$f" | median)"
  rm -f "$f"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $(du -sh "$M" | cut -f1) in $FILES file(s) + config.json; median of $RUNS runs, warm cache"
printf '%-8s %-30s %8s %8s %10s\n' hash tool wall_s cpu_s wall_MiB/s
for algo in sha256 blake3; do
  if [ $algo = sha256 ]; then
    ms=(env "$VENV/bin/model_signing" sign key "$M" --private_key "$W/k.pem" --signature "$W/ms.sig")
    ms_name="model_signing sign key (CLI)"
  else
    ms=(env "$VENV/bin/python" "$W/ms_sign.py" "$M" "$W/k.pem" "$W/ms.sig" blake3)
    ms_name="model_signing Python API"
  fi
  pa=("$P" sign "$M" --private-key "$W/k.pem" --signature "$W/pa.sig" --hash $algo)
  read -r t_ms c_ms <<<"$(time_cmd "${ms[@]}")"
  read -r t_pa c_pa <<<"$(time_cmd "${pa[@]}")"
  # Cross-check: each tool's signature verifies with the other tool.
  "$P" verify "$M" --signature "$W/ms.sig" --public-key "$W/k.pub" >/dev/null
  "$VENV/bin/python" "$W/ms_verify.py" "$M" "$W/k.pub" "$W/pa.sig" $algo >/dev/null 2>&1 \
    || { echo "model_signing rejected palisade's $algo signature" >&2; exit 1; }
  printf '%-8s %-30s %8.3f %8.3f %10.0f\n' $algo "$ms_name" "$t_ms" "$c_ms" "$(echo "$TOTAL_MIB / $t_ms" | bc -l)"
  printf '%-8s %-30s %8.3f %8.3f %10.0f\n' $algo "palisade sign" "$t_pa" "$c_pa" "$(echo "$TOTAL_MIB / $t_pa" | bc -l)"
  printf '%-8s ratio model-signing / palisade: wall %.2fx, cpu %.2fx\n' $algo "$(echo "$t_ms / $t_pa" | bc -l)" "$(echo "$c_ms / $c_pa" | bc -l)"
done
echo "palisade sign peak RSS (sha256): $(/usr/bin/time -f '%M' "$P" sign "$M" --private-key "$W/k.pem" --signature "$W/pa.sig" 2>&1 >/dev/null | tail -1) KiB"
