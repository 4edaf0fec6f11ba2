#!/usr/bin/env bash
# Downloads a public dataset into the directory its `data.root` names, from the URLs and with
# the checksums of src/data/fetch/datasets.txt: what `data.download: true` does inside mtl-train, for
# machines where the binary should not reach the network itself.
#
# Usage: scripts/fetch.sh DATASET [ROOT]         ROOT defaults to the dataset's data/<name>
#        scripts/fetch.sh DATASET --into DIR     ROOT = DIR/<the default root's last name>
#        scripts/fetch.sh                        lists the datasets
#
# MTL_DATA_MIRROR=URL fetches every file from URL/<file name> instead (a site's own copy; the
# checksums still apply). Idempotent: does nothing when ROOT already holds the dataset, reuses
# downloaded files whose checksum is right, resumes interrupted downloads, and never leaves a
# half-written file or directory that looks complete.
set -euo pipefail
FETCH_NAME=fetch
source "$(dirname "${BASH_SOURCE[0]}")/fetch_lib.sh"

if [[ $# == 0 ]]; then
    echo "usage: scripts/fetch.sh DATASET [ROOT | --into DIR]; datasets:"
    for name in $(dataset_names); do
        line="$(dataset_line "$name")"
        echo "  $name -> ${line%% *}"
    done
    exit 0
fi
DATASET="$1"
line="$(dataset_line "$DATASET")" || die "unknown dataset '$DATASET' (known: $(dataset_names | tr '\n' ' '))"
DEFAULT_ROOT="${line%% *}"
FETCH_NAME="fetch $DATASET"
case "${2:-}" in
    "") ROOT="$DEFAULT_ROOT" ;;
    --into) ROOT="${3:?--into needs a directory}/$(basename "$DEFAULT_ROOT")" ;;
    *) ROOT="$2" ;;
esac
fetch_dataset "$DATASET" "$ROOT"
