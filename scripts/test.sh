#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs libtorch and the Python test packages
# into .venv if absent, builds, runs every Rust test (unit, end-to-end, crash, resume) and
# the Python interop tests. GPU-only checks skip themselves on machines without CUDA.
#
#   scripts/test.sh            the whole suite (what CI runs, and the bar for a merge)
#   scripts/test.sh --quick    day-to-day: the library's unit tests, the layering and docs checks, the
#                              PyTorch twin's own tests; no end-to-end runs of the binary
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "test.sh: unknown option $1 (--quick or nothing)" >&2; exit 2 ;;
esac
bash scripts/setup.sh
source scripts/env.sh
# The tooling (`mtl-train bench`) is built and tested too.
cargo build --release --bins --features bench
if [ "$quick" = 1 ]; then
  cargo test --release --features bench --lib --test layers --test docs -- --test-threads=2
  python -m pytest -q tests/test_mtl_torch.py
  exit 0
fi
cargo test --release --features bench -- --test-threads=2
python -m pytest -q tests
