#!/usr/bin/env bash
# Downloads NYUv2 as preprocessed by the MTAN authors (about 420 MB)
# into <dest-dir>/nyuv2 (dest-dir defaults to ./data), where the `nyuv2` dataset reads it.
# The same as `scripts/fetch.sh nyuv2 --into <dest-dir>`; the URLs and checksums are in
# scripts/datasets.txt. mtl-train does this itself with `data.download: true`.
#
# Usage: scripts/fetch_nyuv2.sh [dest-dir]
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/fetch.sh" nyuv2 --into "${1:-data}"
