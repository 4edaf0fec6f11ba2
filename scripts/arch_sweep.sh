#!/usr/bin/env bash
# Every architecture on one config, over several seeds, against single-task baselines
# (docs/results/ARCHITECTURES.md): for each seed the single-task runs (`mtl-train baselines`, hard
# sharing with one task), then their mean as the baselines every multi-task run reports Δm
# against, then each architecture with each seed, then the summary table
# (scripts/arch_table.py: Δm mean and spread over the seeds, parameters, metrics).
#   scripts/arch_sweep.sh CONFIG OUT_DIR [SEED ...]        (default seeds: 0 1 2)
# Environment: ARCHS (default: every one `mtl-train list` names), and MTL_BIN, PY, SETS (scripts/sweep_baselines.sh).
# Finished runs are reused, so an interrupted sweep continues where it stopped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sweep_baselines.sh" "$@"
archs=(${ARCHS:-$("$bin" list --json | "$py" -c 'import json, sys; print(*(a["name"] for a in json.load(sys.stdin)["architectures"]))')})
for s in "${seeds[@]}"; do
  for a in "${archs[@]}"; do
    dir="$out/$a-seed$s"
    if [ ! -f "$dir/checkpoints/LATEST" ]; then
      rm -rf "$dir"
      "$bin" "$cfg" --run-dir "$dir" --set seed="$s" --set model.architecture.kind="$a" ${extra[@]+"${extra[@]}"} \
        --set train.baselines="$out/baselines-mean.json" > "$dir.log" 2>&1 || echo "FAILED: $a seed $s (see $dir.log)" >&2
    fi
  done
done
"$py" "$root/scripts/arch_table.py" "$out"
