#!/usr/bin/env bash
# Loads the real data sets in ../shared/data with palisade-data and prints what was read:
# Fashion-MNIST and MNIST (IDX, gzip) and UCI Adult (CSV, sensitive attribute `sex`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p palisade-data --example data_check
target/release/examples/data_check ../shared/data/mnist ../shared/data/tabular
target/release/examples/data_check ../shared/data/fashion-mnist ../shared/data/tabular | sed -n 1p
