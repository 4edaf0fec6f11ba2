#!/usr/bin/env bash
# Downloads the four MNIST idx files (12 MB, gzipped as published; MultiMNIST is built from them)
# into <dest-dir>/mnist (dest-dir defaults to ./data), where the `multimnist` dataset reads it.
# The same as `scripts/fetch.sh multimnist --into <dest-dir>`; the URLs and checksums are in
# scripts/datasets.txt. mtl-train does this itself with `data.download: true`.
#
# Usage: scripts/fetch_multimnist.sh [dest-dir]
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/fetch.sh" multimnist --into "${1:-data}"
