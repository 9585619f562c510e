#!/usr/bin/env bash
# Corpus check for `palisade scan` (not a test: it needs ../shared/data, which a fresh clone lacks).
#
# Scans every sample of ../shared/data/scan-corpus/{malicious,benign} and every checkpoint of
# ../shared/data/checkpoints-benign, one `palisade scan --json` per sample. A sample is a file,
# except a TensorFlow SavedModel directory (it holds saved_model.pb), which is one sample: its
# payload lives in one of its files and the others (fingerprint, variables) are plain data.
#
# Pass: every malicious sample exits non-zero, and no benign sample or checkpoint has a
# `dangerous` finding. Benign samples that are not models (a PNG, an encrypted zip) may be
# unscannable (exit 2): they are counted separately.
#
# Usage: bench/scan_corpus.sh [path/to/palisade]   (default: builds and uses the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data
BIN=${1:-}
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p palisade-cli
  BIN=target/release/palisade
fi

samples() { # $1 = directory: print one sample per line
  local d=$1
  find "$d" -name saved_model.pb -printf '%h\n' | sort -u
  find "$d" -type f ! -name 'LICENSE*' ! -name '*LICENSE*' | sort | while read -r f; do
    local skip=0
    while read -r sm; do [[ -n "$sm" && "$f" == "$sm"/* ]] && skip=1; done < <(find "$d" -name saved_model.pb -printf '%h\n')
    [[ $skip == 0 ]] && echo "$f"
  done
}

run_set() { # $1 = label, $2 = directory, $3 = malicious|benign
  local label=$1 dir=$2 kind=$3 total=0 nonzero=0 dangerous=0 unscannable=0 bad=()
  while read -r s; do
    total=$((total + 1))
    set +e
    out=$("$BIN" scan --json "$s" 2>/dev/null)
    rc=$?
    set -e
    if ((rc > 2)) || [[ "$out" != *'"summary"'* ]]; then
      echo "palisade did not run on $s (exit $rc)" >&2
      exit 3
    fi
    [[ $rc != 0 ]] && nonzero=$((nonzero + 1))
    [[ $rc == 2 ]] && unscannable=$((unscannable + 1))
    if [[ "$out" == *'"severity": "dangerous"'* ]]; then dangerous=$((dangerous + 1)); fi
    if [[ $kind == malicious && $rc == 0 ]]; then bad+=("MISSED $s"); fi
    if [[ $kind == benign && "$out" == *'"severity": "dangerous"'* ]]; then bad+=("FALSE POSITIVE $s"); fi
  done < <(samples "$dir")
  if [[ $kind == malicious ]]; then
    printf '%-28s flagged %d/%d (dangerous %d, unscannable-only %d)\n' "$label" "$nonzero" "$total" "$dangerous" "$unscannable"
  else
    printf '%-28s flagged dangerous %d/%d (non-zero exit %d, unscannable %d)\n' "$label" "$dangerous" "$total" "$nonzero" "$unscannable"
  fi
  for b in "${bad[@]+"${bad[@]}"}"; do echo "  $b"; done
  [[ ${#bad[@]} == 0 ]]
}

status=0
run_set "malicious" "$DATA/scan-corpus/malicious" malicious || status=1
run_set "benign" "$DATA/scan-corpus/benign" benign || status=1
run_set "checkpoints-benign" "$DATA/checkpoints-benign" benign || status=1
if [[ $status == 0 ]]; then echo "PASS"; else echo "FAIL"; fi
exit $status
