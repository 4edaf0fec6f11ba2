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
FETCH_NAME=fetch_multimnist
source "$(dirname "${BASH_SOURCE[0]}")/fetch_lib.sh"

MIRRORS=("https://yann.lecun.com/exdb/mnist" "https://ossci-datasets.s3.amazonaws.com/mnist")
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
MD5S=(f68b3c2dcbeaaa9fbdd348bbdeb94873 d53e105ee54ea40749a09fcbcd1e9432 9fb629c4189551a2d022fa330f9573f3 ec29112dd5afa0611ce80d1b7f02629c)

DEST="${1:-data}"
OUT="$DEST/mnist"

mkdir -p "$OUT"
for k in "${!FILES[@]}"; do
    f="${FILES[$k]}"
    ok=0
    for m in "${MIRRORS[@]}"; do
        if fetch_md5 "$m/$f" "$OUT/$f" "${MD5S[$k]}"; then
            ok=1
            break
        fi
        say "trying the next source"
    done
    [[ "$ok" == 1 ]] || die "could not download $f with md5 ${MD5S[$k]} from any source"
done
echo "fetch_multimnist: MNIST ready in $OUT (train with configs/multimnist_mlp.yaml or configs/multimnist_lenet.yaml)"
