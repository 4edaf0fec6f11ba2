#!/usr/bin/env bash
# Downloads CIFAR-10 (the official binary version, 170 MB)
# into <dest-dir>/cifar-10-batches-bin (dest-dir defaults to ./data), where the `cifar10_seg` dataset reads it.
# The same as `scripts/fetch.sh cifar10_seg --into <dest-dir>`; the URLs and checksums are in
# scripts/datasets.txt. mtl-train does this itself with `data.download: true`.
#
# Usage: scripts/fetch_cifar10.sh [dest-dir]
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/fetch.sh" cifar10_seg --into "${1:-data}"
