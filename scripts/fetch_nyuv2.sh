#!/usr/bin/env bash
# Downloads NYUv2 as preprocessed for multi-task learning by the MTAN authors (Liu, Johns &
# Davison 2019: 795 train / 654 val images of 288×384 with 13-class segmentation, depth and
# surface normals, one .npy per sample and modality) and extracts it to <dest>/nyuv2, the layout
# the `nyuv2` dataset reads (configs/nyuv2.yaml uses data.root: ../data/nyuv2).
#
# Usage: scripts/fetch_nyuv2.sh [dest-dir]      (dest-dir defaults to ./data)
#
# Source: the archive linked from the MTAN repository (github.com/lorenmt/mtan), about 420 MB.
# Its authors publish no checksum, so this script verifies what it can: the archive must unzip,
# hold exactly 795 + 654 samples of all four modalities, every file must start with the .npy
# magic, and it prints the archive's SHA-256. Set NYUV2_SHA256 to that value (for example in CI)
# to pin the exact bytes on later downloads. Idempotent; never leaves a partial dataset.
set -euo pipefail
FETCH_NAME=fetch_nyuv2
source "$(dirname "${BASH_SOURCE[0]}")/fetch_lib.sh"

URL="https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip?dl=1"
DEST="${1:-data}"
OUT="$DEST/nyuv2"
ARCHIVE="$DEST/nyuv2.zip"
declare -A COUNT=([train]=795 [val]=654)

# complete DIR: the four modality folders of both splits hold the expected sample counts.
complete() {
    local dir="$1" split m n
    for split in train val; do
        for m in image label depth normal; do
            n="$(find "$dir/$split/$m" -maxdepth 1 -name '*.npy' 2>/dev/null | wc -l)"
            [[ "$n" -eq "${COUNT[$split]}" ]] || return 1
        done
    done
}

if complete "$OUT"; then
    echo "fetch_nyuv2: NYUv2 is already in $OUT; nothing to do"
    exit 0
fi
command -v unzip >/dev/null || die "unzip is not installed"

mkdir -p "$DEST"
if [[ ! -f "$ARCHIVE" ]]; then
    say "downloading $URL (about 420 MB)"
    download "$URL" "$ARCHIVE" || die "download failed: $URL"
fi
sum="$(sha256_of "$ARCHIVE")"
echo "fetch_nyuv2: archive sha256 $sum"
if [[ -n "${NYUV2_SHA256:-}" && "$sum" != "$NYUV2_SHA256" ]]; then
    rm -f "$ARCHIVE"
    die "checksum mismatch: expected sha256 $NYUV2_SHA256 (NYUV2_SHA256), got $sum (archive deleted)"
fi

scratch_dir "$DEST"
tmp="$FETCH_SCRATCH"
unzip -q "$ARCHIVE" -d "$tmp" || { rm -f "$ARCHIVE"; die "$ARCHIVE is not a valid zip (deleted; run again)"; }
# The archive holds nyuv2/{train,val}/… (or the splits at its top level).
found="$(find "$tmp" -type d -path '*/train/image' | head -n1)"
[[ -n "$found" ]] || die "$ARCHIVE does not contain train/image/"
root="$(dirname "$(dirname "$found")")"
complete "$root" || die "$ARCHIVE does not hold ${COUNT[train]} train and ${COUNT[val]} val samples of image, label, depth and normal"
bad="$(find "$root" -name '*.npy' -exec sh -c '[ "$(head -c 6 "$1" | tail -c 5)" = NUMPY ] || echo "$1"' _ {} \; | head -n1)"
[[ -z "$bad" ]] || die "$bad is not a .npy file"
rm -rf "$OUT"
mv "$root" "$OUT"
rm -f "$ARCHIVE"
echo "fetch_nyuv2: NYUv2 ready in $OUT (train with configs/nyuv2.yaml); pin it with NYUV2_SHA256=$sum"
