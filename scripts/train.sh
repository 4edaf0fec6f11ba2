#!/usr/bin/env bash
# Installs libtorch into .venv if absent, builds mtl-train (release) and runs it.
# Without arguments it trains the built-in default config (configs/shapes_seg.yaml).
#   scripts/train.sh                       # default config
#   scripts/train.sh configs/cifar_seg.yaml --set train.epochs=5
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --quiet --bin mtl-train
exec target/release/mtl-train "$@"
