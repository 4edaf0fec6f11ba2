# Shared by scripts/fetch.sh and the fetch_*.sh wrappers (sourced, not run): downloads from the
# URLs and with the checksums of src/data/fetch/datasets.txt (the file the binary compiles in for
# `data.download: true`), resumed where the server allows it, never leaving a partial file or
# directory that looks complete; checksum checks that work on Linux and macOS.
# The sourcing script may set FETCH_NAME (its name, for messages) before sourcing this file.

FETCH_SOURCES="${FETCH_SOURCES:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src/data/fetch/datasets.txt}"

die() {
    echo "${FETCH_NAME:-fetch}: error: $*" >&2
    exit 1
}

say() {
    echo "${FETCH_NAME:-fetch}: $*"
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

sha256_of() {
    if command -v sha256sum >/dev/null; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        die "neither sha256sum nor shasum is installed; cannot verify the download"
    fi
}

# digest_of FILE CHECKSUM: FILE's digest in CHECKSUM's algorithm (md5:… or sha256:…).
digest_of() {
    case "$2" in
        md5:*) md5_of "$1" ;;
        sha256:*) sha256_of "$1" ;;
        *) die "unknown checksum '$2'" ;;
    esac
}

# dataset_line DATASET: "<root> <held paths>" from the sources file; fails for an unknown name.
dataset_line() {
    local kind name root holds
    while read -r kind name root holds; do
        if [[ "$kind" == dataset && "$name" == "$1" ]]; then
            echo "$root $holds"
            return 0
        fi
    done <"$FETCH_SOURCES"
    return 1
}

# dataset_files DATASET: one "<file> <bytes> <checksum> <URL>..." line per published file.
dataset_files() {
    local kind name rest
    while read -r kind name rest; do
        [[ "$kind" == file && "$name" == "$1" ]] && echo "$rest"
    done <"$FETCH_SOURCES"
    return 0
}

# dataset_names: every downloadable dataset.
dataset_names() {
    local kind name rest
    while read -r kind name rest; do
        [[ "$kind" == dataset ]] && echo "$name"
    done <"$FETCH_SOURCES"
    return 0
}

# download URL FILE: FILE appears only when the whole download succeeded (it goes to FILE.part
# first). An interrupted download keeps FILE.part and the next call resumes it where the server
# accepts a byte range (else it starts again). Returns non-zero on failure, so a caller can try
# another URL.
download() {
    local url="$1" file="$2"
    if command -v curl >/dev/null; then
        local rc=0
        curl -fL --retry 3 -C - -o "$file.part" "$url" || rc=$?
        if [[ "$rc" == 33 ]]; then
            # The server does not resume: start again.
            rm -f "$file.part"
            rc=0
            curl -fL --retry 3 -o "$file.part" "$url" || rc=$?
        fi
        if [[ "$rc" != 0 ]]; then
            [[ -s "$file.part" ]] || rm -f "$file.part"
            return 1
        fi
    elif command -v wget >/dev/null; then
        wget -c -O "$file.part" "$url" || { [[ -s "$file.part" ]] || rm -f "$file.part"; return 1; }
    else
        die "neither curl nor wget is installed"
    fi
    mv "$file.part" "$file"
}

# fetch_file URL FILE CHECKSUM: FILE with that checksum (md5:HEX, sha256:HEX, or - for none
# published), reused when already there, else downloaded and checked; a download with the wrong
# checksum is deleted. Returns non-zero on failure.
fetch_file() {
    local url="$1" file="$2" want="$3" got
    if [[ -f "$file" ]] && [[ "$want" == - || "$(digest_of "$file" "$want")" == "${want#*:}" ]]; then
        if [[ "$want" == - ]]; then say "reusing $file (no published checksum)"; else say "reusing $file (checksum ok)"; fi
        return 0
    fi
    say "downloading $url"
    download "$url" "$file" || { echo "${FETCH_NAME:-fetch}: download failed: $url" >&2; return 1; }
    if [[ "$want" == - ]]; then
        say "$(basename "$file") has no published checksum; its sha256 is $(sha256_of "$file") (pin it in src/data/fetch/datasets.txt)"
        return 0
    fi
    got="$(digest_of "$file" "$want")"
    if [[ "$got" != "${want#*:}" ]]; then
        rm -f "$file"
        echo "${FETCH_NAME:-fetch}: checksum mismatch for $url: expected ${want%%:*} ${want#*:}, got $got (deleted)" >&2
        return 1
    fi
    say "$(basename "$file") checksum ok"
}

# holds_all DIR PATHS: DIR holds every comma-separated path of PATHS.
holds_all() {
    local dir="$1" p
    local -a paths
    IFS=, read -r -a paths <<<"$2"
    for p in "${paths[@]}"; do
        [[ -e "$dir/$p" ]] || return 1
    done
}

# fetch_dataset DATASET ROOT: the dataset in ROOT, as the binary's data.download would put it.
# Files are downloaded next to ROOT (from $MTL_DATA_MIRROR/<file> when that is set), unpacked
# into a scratch directory, and the directory holding the dataset is moved to ROOT.
fetch_dataset() {
    local dataset="$1" root="$2" line holds parent name bytes sum urls url ok dir found
    line="$(dataset_line "$dataset")" || die "unknown dataset '$dataset' (known: $(dataset_names | tr '\n' ' '))"
    holds="${line#* }"
    if holds_all "$root" "$holds"; then
        say "$dataset is already in $root; nothing to do"
        return 0
    fi
    [[ ! -e "$root" ]] || [[ -d "$root" && -z "$(ls -A "$root")" ]] ||
        die "$root exists but does not hold $holds; move it away and run again"
    parent="$(dirname "$root")"
    mkdir -p "$parent"
    local -a files=()
    while read -r name bytes sum urls; do
        [[ -n "${MTL_DATA_MIRROR:-}" ]] && urls="${MTL_DATA_MIRROR%/}/$name"
        ok=0
        for url in $urls; do
            if fetch_file "$url" "$parent/$name" "$sum"; then
                ok=1
                break
            fi
        done
        [[ "$ok" == 1 ]] || die "could not get $name${bytes:+ ($bytes bytes)} from $urls; run again (an interrupted download resumes)"
        files+=("$name")
    done < <(dataset_files "$dataset")

    # Unpack into a scratch directory beside ROOT and move the dataset into place, so an
    # interrupted run leaves no partial dataset behind.
    FETCH_SCRATCH="$(mktemp -d "$parent/.$(basename "$root").unpack-XXXXXX")"
    trap 'rm -rf "$FETCH_SCRATCH"' EXIT
    for name in "${files[@]}"; do
        case "$name" in
            *.tar.gz | *.tgz) tar -xzf "$parent/$name" -C "$FETCH_SCRATCH" || { rm -f "$parent/$name"; die "could not unpack $parent/$name (deleted; run again)"; } ;;
            *.zip)
                command -v unzip >/dev/null || die "unzip is not installed"
                unzip -q "$parent/$name" -d "$FETCH_SCRATCH" || { rm -f "$parent/$name"; die "could not unpack $parent/$name (deleted; run again)"; }
                ;;
            *) ln "$parent/$name" "$FETCH_SCRATCH/$name" 2>/dev/null || cp "$parent/$name" "$FETCH_SCRATCH/$name" ;;
        esac
    done
    found=""
    for dir in "$FETCH_SCRATCH" "$FETCH_SCRATCH"/*/ "$FETCH_SCRATCH"/*/*/; do
        if [[ -d "$dir" ]] && holds_all "$dir" "$holds"; then
            found="${dir%/}"
            break
        fi
    done
    if [[ -z "$found" ]]; then
        for name in "${files[@]}"; do
            rm -f "$parent/$name"
        done
        die "the downloaded files of $dataset do not hold $holds (deleted)"
    fi
    [[ ! -d "$root" ]] || rmdir "$root"
    mv "$found" "$root"
    for name in "${files[@]}"; do
        rm -f "$parent/$name"
    done
    say "$dataset ready in $root"
}
