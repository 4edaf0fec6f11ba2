#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs libtorch and the Python test packages
# into .venv if absent, builds, runs every Rust test (unit, end-to-end, crash, resume) and
# the Python interop tests. GPU-only checks skip themselves on machines without CUDA.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
# The tooling (`mtl-train bench`) is built and tested too.
cargo build --release --bins --features bench
cargo test --release --features bench -- --test-threads=2
python -m pytest -q tests
