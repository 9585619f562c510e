#!/usr/bin/env bash
# Runs every fuzz target (or those in TARGETS) under libFuzzer for SECONDS_PER_TARGET each, one
# after another, and prints one line per target: runs, coverage, and whether it found anything.
# Corpora grow in fuzz/corpus/<target>, findings land in fuzz/artifacts/<target> (both ignored by
# git). fuzz/seeds/<target>/ holds inputs the fuzzer does not find by itself in minutes (a gRPC
# request with nested FP32 contents, small ONNX graphs of every operator); they always seed their
# target. With a seed folder (e.g. ../shared/data), files under it seed the targets that read that
# kind of file: a copy of each one up to 1 MiB, cut to the target's input limit (max_len below).
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`).
# Usage: bash fuzz/run_all.sh [SEED_DIR]   (SECONDS_PER_TARGET=120 TARGETS="zip pickle_vm")
set -euo pipefail
SEEDS=${1:-}
# The seed folder is named relative to where the script was started, not to fuzz/.
if [ -n "$SEEDS" ]; then
    [ -d "$SEEDS" ] || { echo "no seed folder $SEEDS" >&2; exit 2; }
    SEEDS=$(realpath "$SEEDS")
fi
cd "$(dirname "$0")"
SECS=${SECONDS_PER_TARGET:-120}
TARGETS=${TARGETS:-$(cargo +nightly fuzz list)}
BUILD_LOG=$(mktemp)
cargo +nightly fuzz build --release > "$BUILD_LOG" 2>&1 || { cat "$BUILD_LOG" >&2; exit 2; }
rm -f "$BUILD_LOG"

seed_globs() { # TARGET -> find(1) name patterns of the files that seed it
    case $1 in
        pickle_vm) echo "*.pkl *.pickle *.pt *.pth *.bin *.joblib" ;;
        zip) echo "*.zip *.pt *.pth *.npz *.keras" ;;
        safetensors) echo "*.safetensors" ;;
        gguf) echo "*.gguf" ;;
        onnx_open) echo "*.onnx" ;;
        scan_any) echo "*" ;;
        oms_bundle | oms_statement) echo "*.sig *.json" ;;
        data_npy) echo "*.npy" ;;
        data_csv) echo "*.csv *.data *.test" ;;
        pem_key) echo "*.pem *.pub *.key" ;;
        client_identity) echo "*.der *.crt *.cer" ;;
        *) echo "" ;;
    esac
}

# Largest input libFuzzer makes for TARGET (empty: libFuzzer's choice, from the corpus). onnx_open
# opens, plans and runs each input as a model: from the bundled 900 KB model and its mutations it
# ran 1,773 inputs in 60 s (coverage 20,012); from the small graphs of fuzz/seeds/onnx_open (one
# per operator, written by palisade-model's operator tests) and this limit, 127,002 in 180 s
# (coverage 34,920), and it found a tract panic within seconds (2026-12-05). data_csv, seeded with
# the public datasets whole (120 KB and more), ran 8,199 inputs in 30 s (coverage 1,231); with them
# cut to the limit, 68,870 (1,279). A seed over the limit is cut to it (a CSV file's head is still
# a CSV file; a cut ONNX file is not, and the small graphs stand in).
max_len() {
    case $1 in
        onnx_open | data_csv) echo 16384 ;;
        *) echo "" ;;
    esac
}

add_seed() { # FILE COPY [MAX_LEN]
    [ -e "$2" ] && return
    if [ -n "${3:-}" ]; then head -c "$3" "$1" > "$2"; else cp "$1" "$2"; fi
}

FOUND=0
printf "%-14s %10s %8s %8s  %s\n" target runs cov corpus finding
for T in $TARGETS; do
    CORPUS=corpus/$T
    mkdir -p "$CORPUS" "artifacts/$T"
    # Seeds already in the corpus are left as they are (not `cp -n`, which exits 1 on a skipped
    # file in some coreutils releases and would stop the script).
    if [ -d "seeds/$T" ]; then
        for f in seeds/"$T"/*; do add_seed "$f" "$CORPUS/$(basename "$f")"; done
    fi
    ML=$(max_len "$T")
    if [ -n "$SEEDS" ]; then
        for g in $(seed_globs "$T"); do
            find "$SEEDS" -type f -name "$g" -size -1025k -print0 2> /dev/null |
                while IFS= read -r -d '' f; do add_seed "$f" "$CORPUS/seed-$(basename "$f")" "$ML"; done
        done
    fi
    before=$(find "artifacts/$T" -type f | wc -l)
    LOG=$(mktemp)
    # libFuzzer's own limits stay (2 GiB of memory, 20 min per input): a parser that takes more
    # than that on a few kilobytes is a finding.
    cargo +nightly fuzz run --release "$T" "$CORPUS" -- -max_total_time="$SECS" ${ML:+-max_len=$ML} > "$LOG" 2>&1 || true
    after=$(find "artifacts/$T" -type f | wc -l)
    last=$(grep -E '^#[0-9]+' "$LOG" | tail -1 || true)
    runs=$(sed -E 's/^#([0-9]+).*/\1/' <<< "$last")
    cov=$(grep -oE 'cov: [0-9]+' <<< "$last" | cut -d' ' -f2 || true)
    corp=$(grep -oE 'corp: [0-9]+' <<< "$last" | cut -d' ' -f2 || true)
    finding=none
    if [ "$after" -gt "$before" ]; then
        FOUND=1
        finding="$(grep -m1 -E 'ERROR: libFuzzer|panicked at|SUMMARY' "$LOG" || echo crash) -> artifacts/$T/"
        cp "$LOG" "artifacts/$T/log-$(date +%s).txt"
    fi
    printf "%-14s %10s %8s %8s  %s\n" "$T" "${runs:-?}" "${cov:-?}" "${corp:-?}" "$finding"
    rm -f "$LOG"
done
exit "$FOUND"
