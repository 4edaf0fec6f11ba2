#!/usr/bin/env bash
# Downloads the official CIFAR-10 binary version and extracts it to <dest>/cifar-10-batches-bin,
# the layout the `cifar10_seg` dataset reads (data.root defaults to data/cifar-10-batches-bin).
#
# Usage: scripts/fetch_cifar10.sh [dest-dir]      (dest-dir defaults to ./data)
#
# Idempotent: does nothing when the six batch files are already complete, reuses an archive
# whose checksum is right, and never leaves a half-written archive or directory behind.
set -euo pipefail
FETCH_NAME=fetch_cifar10
source "$(dirname "${BASH_SOURCE[0]}")/fetch_lib.sh"

URL="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5="c32a1d4ab5d03f1284b67883e8d87530"
FILES=(data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin)
# 10000 records of 1 label byte + 3072 pixel bytes per file.
FILE_BYTES=30730000

DEST="${1:-data}"
OUT="$DEST/cifar-10-batches-bin"
ARCHIVE="$DEST/cifar-10-binary.tar.gz"

file_size() {
    # GNU stat, then BSD/macOS stat.
    stat -c %s "$1" 2>/dev/null || stat -f %z "$1"
}

complete() {
    local f
    for f in "${FILES[@]}"; do
        [[ -f "$OUT/$f" && "$(file_size "$OUT/$f")" == "$FILE_BYTES" ]] || return 1
    done
}

if complete; then
    echo "fetch_cifar10: CIFAR-10 is already in $OUT; nothing to do"
    exit 0
fi

mkdir -p "$DEST"
fetch_md5 "$URL" "$ARCHIVE" "$MD5" || die "could not get $URL with md5 $MD5 (about 163 MB); run again"

# Extract into a scratch directory and move into place, so an interrupted run leaves no
# partial cifar-10-batches-bin behind.
scratch_dir "$DEST"
tmp="$FETCH_SCRATCH"
tar -xzf "$ARCHIVE" -C "$tmp" || die "could not extract $ARCHIVE"
[[ -d "$tmp/cifar-10-batches-bin" ]] || die "$ARCHIVE does not contain cifar-10-batches-bin/"
rm -rf "$OUT"
mv "$tmp/cifar-10-batches-bin" "$OUT"
complete || die "$OUT is incomplete after extraction"
rm -f "$ARCHIVE"
echo "fetch_cifar10: CIFAR-10 ready in $OUT"
