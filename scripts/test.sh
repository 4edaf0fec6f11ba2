#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs libtorch and the Python test packages
# into .venv if absent, builds, runs every Rust test (unit, end-to-end, crash, resume) and
# the Python interop tests. GPU-only checks skip themselves on machines without CUDA.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --bins
cargo test --release -- --test-threads=2
python -m pytest -q tests
