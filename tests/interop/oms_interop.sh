#!/usr/bin/env bash
# Interop with the reference implementation, model-signing 1.1.1 from PyPI:
#   palisade sign        -> model_signing verify key   (P-256 and P-384, plain and encrypted keys)
#   model_signing sign   -> palisade verify
#   tampered after signing -> both refuse
# Needs network to PyPI the first time (creates .venv-oms-interop/, git-ignored). Run by .ci/run.
# Usage: bash tests/interop/oms_interop.sh [--prepare]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${OMS_VENV:-.venv-oms-interop}
if [ ! -x "$VENV/bin/model_signing" ]; then
  python3 -m venv "$VENV"
  # pyopenssl: imported by model-signing 1.1.1 but not declared as a dependency.
  "$VENV/bin/pip" install -q "model-signing==1.1.1" pyopenssl
fi
# --prepare: only make the venv (CI does it while Rust compiles).
if [ "${1:-}" = "--prepare" ]; then exit 0; fi
MS="$VENV/bin/model_signing"
# PALISADE=path/to/palisade uses that binary (CI passes the one `cargo test` just built).
if [ -z "${PALISADE:-}" ]; then cargo build -q -p palisade-cli; fi
P=${PALISADE:-target/debug/palisade}

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/model/sub" "$T/model/.git"
head -c 300000 /dev/urandom > "$T/model/weights.bin"
echo '{"hidden_size": 4}' > "$T/model/config.json"
echo 'nested' > "$T/model/sub/tokenizer.txt"
echo 'ref: refs/heads/main' > "$T/model/.git/HEAD"
fail() { echo "INTEROP FAIL: $*" >&2; exit 1; }

echo "== palisade sign -> model_signing verify key"
printf 'interop-pw\n' > "$T/pw"
for curve in p256 p384; do
  for enc in plain encrypted; do
    pwargs=(); [ $enc = encrypted ] && pwargs=(--password-file "$T/pw")
    "$P" keygen --curve $curve --private-key "$T/$curve-$enc.key" --public-key "$T/$curve-$enc.pub" "${pwargs[@]}" >/dev/null
    "$P" sign "$T/model" --private-key "$T/$curve-$enc.key" --signature "$T/$curve-$enc.sig" "${pwargs[@]}" >/dev/null
    "$MS" verify key "$T/model" --signature "$T/$curve-$enc.sig" --public_key "$T/$curve-$enc.pub" >/dev/null 2>&1 \
      || fail "model_signing rejected a palisade $curve ($enc key) signature"
    echo "ok  $curve ($enc key)"
  done
done

echo "== model_signing sign key -> palisade verify"
for curve in p256 p384; do
  "$P" keygen --curve $curve --private-key "$T/ms-$curve.key" --public-key "$T/ms-$curve.pub" >/dev/null
  "$MS" sign key "$T/model" --private_key "$T/ms-$curve.key" --signature "$T/ms-$curve.sig" >/dev/null 2>&1 \
    || fail "model_signing could not sign with a palisade $curve key"
  "$P" verify "$T/model" --signature "$T/ms-$curve.sig" --public-key "$T/ms-$curve.pub" >/dev/null \
    || fail "palisade rejected a model_signing $curve signature"
  echo "ok  $curve"
done

echo "== tampered model: both must refuse"
echo '{"hidden_size": 5}' > "$T/model/config.json"
if "$MS" verify key "$T/model" --signature "$T/p256-plain.sig" --public_key "$T/p256-plain.pub" >/dev/null 2>&1; then
  fail "model_signing accepted a tampered model"
fi
set +e
"$P" verify "$T/model" --signature "$T/ms-p256.sig" --public-key "$T/ms-p256.pub" >/dev/null
rc=$?
set -e
[ $rc = 1 ] || fail "palisade verify on a tampered model exited $rc, expected 1"
echo "ok  both refuse"
echo "== interop passed"
