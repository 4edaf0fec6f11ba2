# Shared by the scripts/fetch_*.sh scripts (sourced, not run): downloads that never leave a
# partial file behind and checksum checks that work on Linux and macOS.
# The sourcing script sets FETCH_NAME (its name, for messages) before sourcing this file.

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

# download URL FILE: FILE appears only when the whole download succeeded (it goes to FILE.part
# first). Returns non-zero on failure, so a caller can try another mirror.
download() {
    local url="$1" file="$2"
    if command -v curl >/dev/null; then
        curl -fL --retry 3 -o "$file.part" "$url" || { rm -f "$file.part"; return 1; }
    elif command -v wget >/dev/null; then
        wget -O "$file.part" "$url" || { rm -f "$file.part"; return 1; }
    else
        die "neither curl nor wget is installed"
    fi
    mv "$file.part" "$file"
}

# fetch_md5 URL FILE MD5: FILE with that MD5, reused when already there, else downloaded and
# checked; a download with the wrong checksum is deleted. Returns non-zero on failure.
fetch_md5() {
    local url="$1" file="$2" want="$3" got
    if [[ -f "$file" && "$(md5_of "$file")" == "$want" ]]; then
        say "reusing $file (checksum ok)"
        return 0
    fi
    say "downloading $url"
    download "$url" "$file" || { echo "${FETCH_NAME:-fetch}: download failed: $url" >&2; return 1; }
    got="$(md5_of "$file")"
    if [[ "$got" != "$want" ]]; then
        rm -f "$file"
        echo "${FETCH_NAME:-fetch}: checksum mismatch for $url: expected md5 $want, got $got (deleted)" >&2
        return 1
    fi
    say "$(basename "$file") checksum ok"
}

# scratch_dir DEST: a temporary directory inside DEST (same file system, so the result can be
# moved into place atomically), removed when the script exits.
scratch_dir() {
    FETCH_SCRATCH="$(mktemp -d "$1/.${FETCH_NAME:-fetch}-extract.XXXXXX")"
    trap 'rm -rf "$FETCH_SCRATCH"' EXIT
}
