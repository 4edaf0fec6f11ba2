#!/usr/bin/env bash
# Runs every balancing method on configs/shapes_methods.yaml (a short recipe), in both
# gradient spaces for the gradient methods, for several seeds: per seed the single-task
# baselines first (Δm of that seed's runs is against them), then every method. Ends with one
# comparison over all runs: a table per run, Δm mean and spread per method over the seeds,
# and a chart (val metrics, averaged over the seeds).
#   SEEDS="0 1 2" scripts/methods_sweep.sh [OUT_DIR] [--set KEY=VALUE ...]   (MTL_BIN overrides the binary)
# Finished runs (with a LATEST checkpoint) are kept, so an interrupted sweep resumes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${MTL_BIN:-$root/target/release/mtl-train}"
out="${1:-$root/runs/methods}"
cfg="$root/configs/shapes_methods.yaml"
extra=("${@:2}")
read -r -a seeds <<< "${SEEDS:-0 1 2}"
# Every method the binary registers; the gradient methods (those `balance.on` applies to) run
# in both spaces.
methods() { # gradient: true | false
  "$bin" list --json | python3 -c 'import json, sys
print(*(m["name"] for m in json.load(sys.stdin)["methods"] if m["gradient"] == (sys.argv[1] == "true")))' "$1"
}
read -r -a loss_methods <<< "$(methods false)"
read -r -a grad_methods <<< "$(methods true)"
runs=()
run() { # seed_dir seed method space
  local dir="$1/$3-$4"
  if [ ! -f "$dir/checkpoints/LATEST" ]; then
    rm -rf "$dir"
    "$bin" "$cfg" --run-dir "$dir" --set seed="$2" --set balance.method="$3" --set balance.on="$4" \
      --set train.baselines="$1/shapes_methods-baselines.json" "${extra[@]}" > "$dir.log" 2>&1 \
      || { echo "FAILED: seed $2 $3 $4 (see $dir.log)"; return; }
  fi
  runs+=("$dir")
}
for seed in "${seeds[@]}"; do
  dir="$out/seed$seed"
  mkdir -p "$dir"
  [ -f "$dir/shapes_methods-baselines.json" ] || "$bin" baselines "$cfg" --runs "$dir" --set seed="$seed" "${extra[@]}"
  for m in "${loss_methods[@]}"; do run "$dir" "$seed" "$m" params; done
  for m in "${grad_methods[@]}"; do run "$dir" "$seed" "$m" params; run "$dir" "$seed" "$m" representation; done
done
"$bin" compare "${runs[@]}" --chart "$out/compare.png" --table "$out/table.md"
