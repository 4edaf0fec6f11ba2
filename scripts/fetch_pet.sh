#!/usr/bin/env bash
# Downloads the Oxford-IIIT Pet dataset (images and annotations) from the Visual Geometry Group's
# page and extracts it to <dest>/oxford-iiit-pet/{images,annotations}, the layout the `pet`
# dataset reads (configs/pet.yaml uses data.root: ../data/oxford-iiit-pet).
#
# Usage: scripts/fetch_pet.sh [dest-dir]      (dest-dir defaults to ./data)
#
# Both archives are checked against the MD5s torchvision pins (about 790 MB + 19 MB).
# Idempotent: reuses archives whose checksum is right; extracts into a scratch directory and
# moves it into place, so an interrupted run leaves no half-extracted dataset behind.
set -euo pipefail
FETCH_NAME=fetch_pet
source "$(dirname "${BASH_SOURCE[0]}")/fetch_lib.sh"

BASE="https://www.robots.ox.ac.uk/~vgg/data/pets/data"
ARCHIVES=(images.tar.gz annotations.tar.gz)
MD5S=(5c4f3ee8e5d25df40f4fd59a7f44e54c 95a8c909bbe2e81eed6a22bccdf3f68f)

DEST="${1:-data}"
OUT="$DEST/oxford-iiit-pet"

complete() {
    [[ -f "$OUT/annotations/list.txt" && -f "$OUT/annotations/trainval.txt" && -f "$OUT/annotations/test.txt" \
        && -d "$OUT/annotations/trimaps" && -d "$OUT/images" ]] \
        && [[ "$(find "$OUT/images" -name '*.jpg' | wc -l)" -ge 7000 ]]
}

if complete; then
    echo "fetch_pet: Oxford-IIIT Pet is already in $OUT; nothing to do"
    exit 0
fi

mkdir -p "$DEST"
for k in "${!ARCHIVES[@]}"; do
    fetch_md5 "$BASE/${ARCHIVES[$k]}" "$DEST/${ARCHIVES[$k]}" "${MD5S[$k]}" ||
        die "could not get $BASE/${ARCHIVES[$k]} with md5 ${MD5S[$k]}; run again"
done

scratch_dir "$DEST"
tmp="$FETCH_SCRATCH"
for a in "${ARCHIVES[@]}"; do
    tar -xzf "$DEST/$a" -C "$tmp" || die "could not extract $DEST/$a"
done
[[ -d "$tmp/images" && -d "$tmp/annotations" ]] || die "the archives do not contain images/ and annotations/"
rm -rf "$OUT"
mkdir -p "$OUT"
mv "$tmp/images" "$tmp/annotations" "$OUT/"
complete || die "$OUT is incomplete after extraction"
rm -f "$DEST/images.tar.gz" "$DEST/annotations.tar.gz"
echo "fetch_pet: Oxford-IIIT Pet ready in $OUT (train with configs/pet.yaml)"
