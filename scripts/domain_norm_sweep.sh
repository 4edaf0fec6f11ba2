#!/usr/bin/env bash
# BatchNorm across the data groups of a multi-input config (docs/MULTI_INPUT.md): for each seed
# the single-task baselines (`mtl-train baselines`: one model per domain, the config's backbone),
# their mean over the seeds, then the multi-input model with `model.domain_norm` shared,
# statistics and affine, and without BatchNorm (`model.backbone.norm: none`), each reporting Δm
# against that mean; then the table (per variant: each task's final val accuracy as mean ± sd
# over the seeds, Δm mean ± sd and per seed).
#   scripts/domain_norm_sweep.sh CONFIG OUT_DIR [SEED ...]        (default seeds: 0 1 2)
# Environment: VARIANTS (default: shared statistics affine none), and MTL_BIN, PY, SETS
# (scripts/sweep_baselines.sh). Finished runs are reused.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sweep_baselines.sh" "$@"
variants=(${VARIANTS:-shared statistics affine none})
for s in "${seeds[@]}"; do
  for v in "${variants[@]}"; do
    dir="$out/$v-seed$s"
    case "$v" in
      none) sets=(--set model.backbone.norm=none) ;;
      *) sets=(--set model.domain_norm="$v") ;;
    esac
    if [ ! -f "$dir/checkpoints/LATEST" ]; then
      rm -rf "$dir"
      "$bin" "$cfg" --run-dir "$dir" --set seed="$s" "${sets[@]}" ${extra[@]+"${extra[@]}"} \
        --set train.baselines="$out/baselines-mean.json" > "$dir.log" 2>&1 || echo "FAILED: $v seed $s (see $dir.log)" >&2
    fi
  done
done
"$py" - "$out" "${variants[@]}" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
out, variants = Path(sys.argv[1]), sys.argv[2:]
base = json.load(open(out / "baselines-mean.json"))
tasks = [k[: -len(".accuracy")] for k in base["metrics"] if k.endswith(".accuracy")]
def last_val(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r for r in rows if r.get("split") == "val"][-1]
def cell(v):
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
print("| model | " + " | ".join(tasks) + " | Δm % mean ± sd (per seed) |")
print("|---" * (len(tasks) + 2) + "|")
per = base.get("per_seed", [base["metrics"]])
print("| one model per domain (`baselines`) | " + " | ".join(cell([p[f"{t}.accuracy"] for p in per]) for t in tasks) + " | 0 |")
for v in variants:
    runs = sorted(out.glob(f"{v}-seed*/metrics.jsonl"))
    vals = [last_val(r.parent) for r in runs]
    if not vals:
        continue
    dm = [x["delta_m"] for x in vals]
    label = "`norm: none`" if v == "none" else f"`domain_norm: {v}`"
    print(f"| {label} | " + " | ".join(cell([x[f"{t}.accuracy"] for x in vals]) for t in tasks)
          + f" | **{cell(dm).replace('0.', '0.')}** ({', '.join(f'{d:+.2f}' for d in dm)}) |")
PYEOF
