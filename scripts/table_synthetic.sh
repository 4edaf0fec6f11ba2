#!/usr/bin/env bash
# The MMoE paper's synthetic comparison on generated tables: shared bottom (hps) against MMoE
# at a low and a high task correlation, over seeds; prints each run's final val MSE per task.
# Usage: scripts/table_synthetic.sh [ROWS] [EPOCHS] [SEEDS...]   (from the repository root)
set -euo pipefail
source "$(dirname "$0")/env.sh"
rows=${1:-8000}; epochs=${2:-20}; shift 2 || true
seeds=("${@:-0 1 2}"); seeds=(${seeds[@]})
bin=target/release/mtl-train
out=${OUT:-runs/table_synthetic}
mkdir -p "$out"
for rho in 0.1 0.9; do
  data="$(realpath -m "$out/data-rho$rho")"
  python scripts/make_tables.py synthetic "$data" --rows "$rows" --rho "$rho" --seed 7
  for arch in hps mmoe; do
    spec="{kind: $arch}"; [ "$arch" = mmoe ] && spec="{kind: mmoe, experts: 8}"
    for seed in "${seeds[@]}"; do
      run="$out/rho$rho-$arch-seed$seed"
      rm -rf "$run"
      "$bin" configs/table_synthetic_mmoe.yaml --run-dir "$run" --set device=cpu --set seed="$seed" \
        --set "model.architecture=$spec" --set train.epochs="$epochs" --set train.eval_every="$epochs" \
        --set data.train="$data/train.npz" --set data.val="$data/val.npz" > "$run.log" 2>&1 || { tail -3 "$run.log"; exit 1; }
      python - "$run" "$rho" "$arch" "$seed" <<'PY'
import json, sys
run, rho, arch, seed = sys.argv[1:]
val = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"val"' in l][-1]
print(f"rho {rho} {arch:5s} seed {seed}: y1.mse {val['y1.mse']:.4f} y2.mse {val['y2.mse']:.4f} sum {val['y1.mse'] + val['y2.mse']:.4f}")
PY
    done
  done
done
