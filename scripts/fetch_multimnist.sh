#!/usr/bin/env bash
# Downloads the four MNIST idx files (gzipped, as published) into <dest>/mnist, the layout the
# `multimnist` dataset reads (configs/multimnist_*.yaml use data.root: ../data/mnist). The
# MultiMNIST images themselves are built at load time from these digits and the run's seed.
#
# Usage: scripts/fetch_multimnist.sh [dest-dir]      (dest-dir defaults to ./data)
#
# Source: Yann LeCun's MNIST page, falling back to PyTorch's mirror of the same files; every file
# is checked against the MD5 that torchvision pins. Idempotent; never leaves a partial file.
set -euo pipefail

MIRRORS=("https://yann.lecun.com/exdb/mnist" "https://ossci-datasets.s3.amazonaws.com/mnist")
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
MD5S=(f68b3c2dcbeaaa9fbdd348bbdeb94873 d53e105ee54ea40749a09fcbcd1e9432 9fb629c4189551a2d022fa330f9573f3 ec29112dd5afa0611ce80d1b7f02629c)

DEST="${1:-data}"
OUT="$DEST/mnist"

die() {
    echo "fetch_multimnist: error: $*" >&2
    exit 1
}

md5_of() {
    if command -v md5sum >/dev/null; then
        md5sum "$1" | cut -d' ' -f1
    elif command -v md5 >/dev/null; then
        md5 -q "$1"
    else
        die "neither md5sum nor md5 is installed; cannot verify the download"
    fi
}

fetch() {
    local url="$1" out="$2"
    if command -v curl >/dev/null; then
        curl -fsSL --retry 3 -o "$out" "$url"
    elif command -v wget >/dev/null; then
        wget -q -O "$out" "$url"
    else
        die "neither curl nor wget is installed"
    fi
}

mkdir -p "$OUT"
for k in "${!FILES[@]}"; do
    f="${FILES[$k]}"
    want="${MD5S[$k]}"
    if [[ -f "$OUT/$f" && "$(md5_of "$OUT/$f")" == "$want" ]]; then
        echo "fetch_multimnist: $f already present (checksum ok)"
        continue
    fi
    ok=0
    for m in "${MIRRORS[@]}"; do
        echo "fetch_multimnist: downloading $m/$f"
        if fetch "$m/$f" "$OUT/$f.part" && [[ "$(md5_of "$OUT/$f.part")" == "$want" ]]; then
            mv "$OUT/$f.part" "$OUT/$f"
            ok=1
            break
        fi
        rm -f "$OUT/$f.part"
        echo "fetch_multimnist: $m failed or gave a wrong checksum; trying the next source" >&2
    done
    [[ "$ok" == 1 ]] || die "could not download $f with md5 $want from any source"
done
echo "fetch_multimnist: MNIST ready in $OUT (train with configs/multimnist_mlp.yaml or configs/multimnist_lenet.yaml)"
