# Sourced by the sweeps (scripts/arch_sweep.sh, scripts/domain_norm_sweep.sh) with their
# arguments CONFIG OUT_DIR [SEED ...] (default seeds: 0 1 2): sets root, bin, py, cfg, out,
# seeds, name and extra (`--set` arguments from SETS, for every run), then runs the single-task
# baselines of every seed (`mtl-train baselines`, reused when present) and writes
# OUT_DIR/baselines-mean.json, the mean over the seeds of each single-task metric (what the
# sweeps' Δm is measured against; `per_seed` keeps each seed's).
# Environment: MTL_BIN (binary, default target/release/mtl-train), PY (python with torch,
# default .venv/bin/python), SETS (e.g. "threads=1" on a shared machine).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${MTL_BIN:-$root/target/release/mtl-train}"
py="${PY:-$root/.venv/bin/python}"
cfg="$1"
out="$2"
shift 2
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
extra=()
for kv in ${SETS:-}; do extra+=(--set "$kv"); done
mkdir -p "$out"
export RUST_LOG="${RUST_LOG:-warn}"
name="$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$cfg")"
files=()
for s in "${seeds[@]}"; do
  [ -f "$out/stl-seed$s/$name-baselines.json" ] ||
    "$bin" baselines "$cfg" --runs "$out/stl-seed$s" --set seed="$s" ${extra[@]+"${extra[@]}"} \
      > "$out/stl-seed$s.log" 2>&1 || { echo "FAILED: baselines seed $s (see $out/stl-seed$s.log)" >&2; exit 1; }
  files+=("$out/stl-seed$s/$name-baselines.json")
done
"$py" - "$out/baselines-mean.json" "${files[@]}" <<'PYEOF'
import json, sys
files = [json.load(open(f)) for f in sys.argv[2:]]
keys = sorted(set.intersection(*(set(f["metrics"]) for f in files)))
mean = {k: sum(f["metrics"][k] for f in files) / len(files) for k in keys}
runs = {t: ", ".join(f["runs"][t] for f in files) for t in files[0]["runs"]}
json.dump({"config": files[0]["config"], "metrics": mean, "runs": runs, "per_seed": [f["metrics"] for f in files]},
          open(sys.argv[1], "w"), indent=2)
PYEOF
