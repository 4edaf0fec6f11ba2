#!/usr/bin/env bash
# Measures the c10d object sizes of a libtorch build and prints the lines csrc/dist/c10d_sizes.txt
# holds for it: `<library> <build id> <Class>=<bytes> ...`. Run it once per new torch release (x86-64
# only, needs binutils), review the numbers, and append them to the table; build.rs only reads the
# table. How: inside a library function that constructs the class, the byte count passed to
# `operator new` right before the class's constructor is called (docs/DISTRIBUTED.md, "The size check").
#
#   scripts/c10d_sizes.sh [TORCH_LIB_DIR]     (default: the .venv's torch/lib)
set -euo pipefail
cd "$(dirname "$0")/.."
lib_dir=${1:-$(.venv/bin/python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}

# library | class | function constructing it | the class's constructor (symbol prefixes)
probes="libtorch_cpu.so TCPStore _ZN4c10d8TCPStore5cloneEv _ZN4c10d8TCPStoreC1
libtorch_cpu.so ProcessGroupGloo::Options _ZN4c10d16ProcessGroupGloo7Options14create_default _ZN4c10d16ProcessGroupGloo7OptionsC1
libtorch_cpu.so ProcessGroupGloo _ZN4c10d16ProcessGroupGloo5split _ZN4c10d16ProcessGroupGlooC1
libtorch_cuda.so ProcessGroupNCCL _ZN4c10d16ProcessGroupNCCL5merge _ZN4c10d16ProcessGroupNCCLC1
libtorch_cuda.so ProcessGroupNCCL::Options _ZN4c10d16ProcessGroupNCCL6shrink _ZN4c10d16ProcessGroupNCCL7OptionsC1"

# The `operator new` size before the first call of constructor $3 in function $2 of library $1.
allocation_size() {
    local lib=$1 function=$2 constructor=$3 start size
    read -r start size < <(nm -DS --defined-only "$lib" | awk -v f="$function" 'index($4, f) == 1 && !n++ { print $1, $2 }')
    [ -n "${start:-}" ] || { echo "$lib has no $function" >&2; return 1; }
    local hex
    hex=$(objdump -d --no-show-raw-insn --start-address=$((16#$start)) --stop-address=$((16#$start + 16#$size)) "$lib" |
        awk -v ctor="<$constructor" '
            found { next }
            /mov +\$0x[0-9a-f]+,%edi$/ { sub(/.*mov +\$0x/, ""); sub(/,%edi$/, ""); imm = $0; next }
            /call/ {
                if (index($0, "<_Znwm@plt>")) pending = imm
                else if (index($0, ctor)) found = pending
                imm = ""
            }
            END { if (found == "") exit 1; print found }') || return 1
    echo $((16#$hex))
}

for lib in libtorch_cpu.so libtorch_cuda.so; do
    [ -f "$lib_dir/$lib" ] || continue
    id=$(readelf -n "$lib_dir/$lib" 2>/dev/null | awk '/Build ID:/ { print $3; exit }')
    line="$lib $id"
    while read -r probe_lib class function constructor; do
        [ "$probe_lib" = "$lib" ] || continue
        bytes=$(allocation_size "$lib_dir/$lib" "$function" "$constructor") ||
            { echo "$lib: $function does not construct $class the expected way" >&2; exit 1; }
        line="$line $class=$bytes"
    done <<<"$probes"
    echo "$line"
done
