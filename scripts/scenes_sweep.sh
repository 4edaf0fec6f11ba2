#!/usr/bin/env bash
# Dense multi-task learning on generated `scenes` (docs/results/ARCHITECTURES.md, "Four dense tasks
# on scenes"): semantic, depth, normals and boundaries; every architecture against single-task
# baselines over the seeds (scripts/arch_sweep.sh: Δm, parameters, per-task metrics), then each
# architecture's cost per training step and peak memory (`mtl-train bench`, median of 3
# repetitions), written to OUT_DIR/table.md.
#   scripts/scenes_sweep.sh OUT_DIR [SEED ...]                (default seeds: 0 1 2)
# Environment: SIZE=tiny (default: 16×16 images, 384 train / 128 val, widths 8-16-32, 3 epochs,
# one thread; about 10–15 minutes on a shared 2-core CPU) or SIZE=full (configs/scenes.yaml as it
# is: 32×32, 4000 images, 5 epochs); ARCHS (default: every architecture), MTL_BIN, PY.
# Finished runs are reused, so an interrupted sweep continues where it stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: scripts/scenes_sweep.sh OUT_DIR [SEED ...]}"
shift
bin="${MTL_BIN:-$root/target/release/mtl-train}"
py="${PY:-$root/.venv/bin/python}"
if [ "${SIZE:-tiny}" = tiny ]; then
  export SETS="threads=1 data.image_size=16 data.train_size=384 data.val_size=128 model.backbone.widths=[8,16,32] train.epochs=3 schedule.warmup_steps=5 checkpoint.keep_last=1 report.tensorboard=false"
else
  export SETS="${SETS:-}"
fi
mkdir -p "$out"
"$root/scripts/arch_sweep.sh" "$root/configs/scenes.yaml" "$out" "$@" | tee "$out/quality.md"
archs=(${ARCHS:-$("$bin" list --json | "$py" -c 'import json, sys; print(*(a["name"] for a in json.load(sys.stdin)["architectures"]))')})
sets=()
for kv in $SETS; do sets+=(--set "$kv"); done
for a in "${archs[@]}"; do
  "$bin" bench "$root/configs/scenes.yaml" --set model.architecture.kind="$a" ${sets[@]+"${sets[@]}"} \
    --warmup 2 --steps 5 --reps 3 --json "$out/bench-$a.jsonl.tmp" > "$out/bench-$a.log" 2>&1 ||
    echo "FAILED: bench $a (see $out/bench-$a.log)" >&2
  [ -f "$out/bench-$a.jsonl.tmp" ] && mv "$out/bench-$a.jsonl.tmp" "$out/bench-$a.jsonl"
done
"$py" - "$out" "${archs[@]}" > "$out/cost.md" <<'PYEOF'
import json, sys
from pathlib import Path
print("| architecture | parameters | seconds per step (median [min–max]) | peak RSS MiB |")
print("|---|---|---|---|")
for arch in sys.argv[2:]:
    f = Path(sys.argv[1]) / f"bench-{arch}.jsonl"
    if not f.is_file():
        print(f"| {arch} | failed | – | – |")
        continue
    r = json.loads(f.read_text().splitlines()[-1])
    ips = r["images_per_second"]
    b = r["batch_size"]
    print(f"| {arch} | {r['parameters']:,} | {b / ips['median']:.3f} [{b / ips['max']:.3f}–{b / ips['min']:.3f}] | {r['peak_rss_mib']:.0f} |")
PYEOF
cat "$out/quality.md" "$out/cost.md" > "$out/table.md"
cat "$out/cost.md"
