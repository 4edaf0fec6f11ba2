#!/usr/bin/env bash
# Measured transfer on tasks with known relations (configs/shapes_transfer.yaml: `kind`, its
# duplicate, the related per-pixel `seg` and colour-relabelled `flip`, the unrelated `noise`, the
# conflicting `color`),
# for several seeds; prints, per seed, the mean lookahead affinity onto `kind` and from it, and
# the gradient cosine with it (docs/TRANSFER.md shows the output).
#   SEEDS="0 1 2" scripts/transfer_known.sh [OUT_DIR] [--set KEY=VALUE ...]   (MTL_BIN overrides the binary)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${MTL_BIN:-$root/target/release/mtl-train}"
out="${1:-$root/runs/transfer_known}"
extra=("${@:2}")
read -r -a seeds <<< "${SEEDS:-0 1 2}"
mkdir -p "$out"
for seed in "${seeds[@]}"; do
  run="$out/seed$seed"
  if [ ! -f "$run/affinity.json" ]; then
    rm -rf "$run"
    "$bin" "$root/configs/shapes_transfer.yaml" --run-dir "$run" --set "seed=$seed" "${extra[@]}" > "$run.log" 2>&1
  fi
done
python3 - "$out" "${seeds[@]}" <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
print("| seed | task | Z[task→kind] | Z[kind→task] | cos(kind, task) | s/measurement |")
print("| --- | --- | --- | --- | --- | --- |")
for seed in seeds:
    s = json.load(open(f"{out}/seed{seed}/affinity.json"))
    k = s["tasks"].index("kind")
    order = sorted((i for i in range(len(s["tasks"])) if i != k), key=lambda i: -s["affinity"][i][k])
    for i in order:
        print(f"| {seed} | {s['tasks'][i]} | {s['affinity'][i][k]:+.5f} | {s['affinity'][k][i]:+.5f} "
              f"| {s['cosine'][k][i]:+.3f} | {s['seconds_per_step']:.2f} |")
PY
