#!/usr/bin/env bash
# Downloads Oxford-IIIT Pet (images/ and annotations/, 811 MB)
# into <dest-dir>/oxford-iiit-pet (dest-dir defaults to ./data), where the `pet` dataset reads it.
# The same as `scripts/fetch.sh pet --into <dest-dir>`; the URLs and checksums are in
# scripts/datasets.txt. mtl-train does this itself with `data.download: true`.
#
# Usage: scripts/fetch_pet.sh [dest-dir]
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/fetch.sh" pet --into "${1:-data}"
