#!/usr/bin/env bash
# Runs every balancing method on configs/shapes_methods.yaml (a short recipe, same seed),
# in both gradient spaces for the gradient methods, after the single-task baselines, then
# writes the comparison table to docs/METHODS.md's generated section (and prints it).
#   scripts/methods_sweep.sh [OUT_DIR]       (MTL_BIN overrides the binary)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${MTL_BIN:-$root/target/release/mtl-train}"
out="${1:-$root/runs/methods}"
cfg="$root/configs/shapes_methods.yaml"
extra=("${@:2}")
mkdir -p "$out"
"$bin" baselines "$cfg" --runs "$out" "${extra[@]}"
baselines="$out/shapes_methods-baselines.json"
loss_methods=(static ew uncertainty dwa gls rlw famo)
grad_methods=(mgda pcgrad gradvac cagrad imtl nash aligned dbmtl gradnorm upgrad)
runs=()
run() { # method space
  local dir="$out/$1-$2"
  if [ ! -f "$dir/checkpoints/LATEST" ]; then
    rm -rf "$dir"
    "$bin" "$cfg" --run-dir "$dir" --set balance.method="$1" --set balance.on="$2" \
      --set train.baselines="$baselines" "${extra[@]}" > "$dir.log" 2>&1 || { echo "FAILED: $1 $2 (see $dir.log)"; return; }
  fi
  runs+=("$dir")
}
for m in "${loss_methods[@]}"; do run "$m" params; done
for m in "${grad_methods[@]}"; do run "$m" params; run "$m" representation; done
"$bin" compare "${runs[@]}" --baselines "$baselines" --chart "$out/compare.png" --table "$out/table.md"
