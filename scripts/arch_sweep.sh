#!/usr/bin/env bash
# Every architecture on one config, over several seeds, against single-task baselines
# (docs/results/ARCHITECTURES.md): for each seed the single-task runs (`mtl-train baselines`, hard
# sharing with one task), then their mean as the baselines every multi-task run reports Δm
# against, then each architecture with each seed, then the summary table
# (scripts/arch_table.py: Δm mean and spread over the seeds, parameters, metrics).
#   scripts/arch_sweep.sh CONFIG OUT_DIR [SEED ...]        (default seeds: 0 1 2)
# Environment: MTL_BIN (binary, default target/release/mtl-train), ARCHS (default: every one
# `mtl-train list` names),
# PY (python with torch, default .venv/bin/python). Finished runs are reused, so an
# interrupted sweep continues where it stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${MTL_BIN:-$root/target/release/mtl-train}"
py="${PY:-$root/.venv/bin/python}"
cfg="$1"
out="$2"
shift 2
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
archs=(${ARCHS:-$("$bin" list --json | "$py" -c 'import json, sys; print(*(a["name"] for a in json.load(sys.stdin)["architectures"]))')})
mkdir -p "$out"
export RUST_LOG="${RUST_LOG:-warn}"
name="$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$cfg")"
files=()
for s in "${seeds[@]}"; do
  "$bin" baselines "$cfg" --runs "$out/stl-seed$s" --set seed="$s" > "$out/stl-seed$s.log" 2>&1 ||
    { echo "FAILED: baselines seed $s (see $out/stl-seed$s.log)" >&2; exit 1; }
  files+=("$out/stl-seed$s/$name-baselines.json")
done
# The mean over the seeds of each single-task metric: what Δm is measured against.
"$py" - "$out/baselines-mean.json" "${files[@]}" <<'PYEOF'
import json, sys
files = [json.load(open(f)) for f in sys.argv[2:]]
keys = sorted(set.intersection(*(set(f["metrics"]) for f in files)))
mean = {k: sum(f["metrics"][k] for f in files) / len(files) for k in keys}
runs = {t: ", ".join(f["runs"][t] for f in files) for t in files[0]["runs"]}
json.dump({"config": files[0]["config"], "metrics": mean, "runs": runs}, open(sys.argv[1], "w"), indent=2)
PYEOF
for s in "${seeds[@]}"; do
  for a in "${archs[@]}"; do
    dir="$out/$a-seed$s"
    if [ ! -f "$dir/checkpoints/LATEST" ]; then
      rm -rf "$dir"
      "$bin" "$cfg" --run-dir "$dir" --set seed="$s" --set model.architecture.kind="$a" \
        --set train.baselines="$out/baselines-mean.json" > "$dir.log" 2>&1 || echo "FAILED: $a seed $s (see $dir.log)" >&2
    fi
  done
done
"$py" "$root/scripts/arch_table.py" "$out"
