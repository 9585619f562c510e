#!/usr/bin/env bash
# Runs `palisade verify` over every OMS vector in ../shared/data/oms-vectors and prints, per vector,
# the expected outcome, the exit code and PASS (behaved as expected) or FAIL.
#   bash bench/oms_vectors.sh            # builds palisade (release) first
# Exit code: 0 if every vector behaved as expected, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
V=${OMS_VECTORS:-../shared/data/oms-vectors}
S=$V/ossf-model-signing-spec/test-vectors/v1.0
# The spec's key.bundle.json is signed by the key of the leaf certificate in certificate.bundle.json;
# the repo keeps that public key (derived with `openssl x509 -pubkey`).
SPEC_KEY=crates/palisade-supply/tests/data/oms/spec/spec_key_p384_public.pem
# PALISADE=path/to/palisade skips the build.
if [ -z "${PALISADE:-}" ]; then cargo build --release -q -p palisade-cli || exit 2; fi
P=${PALISADE:-target/release/palisade}
K256=$V/keys/ec_p256_public.pem
K384=$V/keys/ec_p384_public.pem
fails=0
check() { # name expected_rc args...
  local name=$1 want=$2; shift 2
  "$P" verify "$@" >/tmp/oms_vec_out.$$ 2>&1
  local rc=$?
  local verdict=PASS
  [ "$rc" = "$want" ] || { verdict=FAIL; fails=$((fails + 1)); }
  printf '%-4s %-58s want=%s got=%s  %s\n' "$verdict" "$name" "$want" "$rc" "$(head -c 150 /tmp/oms_vec_out.$$ | head -1)"
}
echo "== model-signing 1.1.1 vectors (0 = verified)"
check "model.sig P-256 sha256 files"            0 "$V/model" --signature "$V/model.sig" --public-key "$K256"
check "model.p384.sig P-384 sha256 ignore"      0 "$V/model" --signature "$V/model.p384.sig" --public-key "$K384"
check "model.files-blake3.sig"                  0 "$V/model" --signature "$V/model.files-blake3.sig" --public-key "$K256"
check "model.files-blake2.sig (blake2b)"        0 "$V/model" --signature "$V/model.files-blake2.sig" --public-key "$K256"
check "model.shards64-sha256.sig (64.0)"        0 "$V/model" --signature "$V/model.shards64-sha256.sig" --public-key "$K256"
echo "== must be rejected (1 = verification failed)"
check "model.sig vs ec_p384_public.pem"         1 "$V/model" --signature "$V/model.sig" --public-key "$K384"
for s in model.sig model.p384.sig model.files-blake3.sig model.files-blake2.sig model.shards64-sha256.sig; do
  k=$K256; [ "$s" = model.p384.sig ] && k=$K384
  check "$s vs model_tampered/"                 1 "$V/model_tampered" --signature "$V/$s" --public-key "$k"
done
echo "== must be an error (2): unsupported key type"
check "model.sig vs ed25519_public.pem"         2 "$V/model" --signature "$V/model.sig" --public-key "$V/keys/ed25519_public.pem"
echo "== OMS spec test-vectors/v1.0 (no model files ship with them: signature + statement only)"
check "valid/key.bundle.json"                   0 --signature "$S/valid/key.bundle.json" --public-key "$SPEC_KEY"
check "valid/certificate.bundle.json (pinned)"  0 --signature "$S/valid/certificate.bundle.json" --public-key "$SPEC_KEY"
# Sigstore keyless verification needs the Sigstore trust root (Fulcio, Rekor): not supported, so
# Palisade refuses it (1) instead of claiming it verified.
check "valid/sigstore.bundle.json (unsupported)" 1 --signature "$S/valid/sigstore.bundle.json" --public-key "$SPEC_KEY"
for f in "$S"/invalid/*.json "$S"/invalid-payload/*.json; do
  check "${f#"$S"/}"                            1 --signature "$f" --public-key "$SPEC_KEY"
done
rm -f /tmp/oms_vec_out.$$
echo "== $fails unexpected outcome(s)"
[ "$fails" = 0 ]
