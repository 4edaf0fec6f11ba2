#!/usr/bin/env bash
# Data-parallel step time and all-reduce share: `mtl-train bench` started as N ranks the
# torchrun way (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), for each N given; rank 0 times the
# steps (collectives included) and then the step's collectives alone, and appends one JSON line
# per N. N=1 runs twice: as a plain process and as a world of one through the process group.
# The per-rank batch stays fixed (the global batch grows with N); CPU threads per rank are
# nproc / N (at least 1) unless --threads says.
#
#   scripts/bench_dist.sh                          # default config, CPU, 1 2 4 ranks, batch 32 per rank
#   scripts/bench_dist.sh --ranks "1 2" --batch 16 --config configs/cifar_seg.yaml --set data.dataset=shapes
#   scripts/bench_dist.sh --device cuda --ranks "1 2 4 8" --batch 64    # one GPU per rank (NCCL)
#
# Options: --config FILE (default configs/shapes_seg.yaml), --ranks "N ..." (default "1 2 4"),
#   --batch B (per rank, default 32), --device cpu|cuda (default cpu), --steps S, --reps R,
#   --threads T (per rank; default nproc / N),
#   --set KEY=VALUE (repeatable, passed on), --out FILE.jsonl (default
#   runs/bench/<date>-dist-<device>.jsonl). Environment: MTL (binary, default
#   target/release/mtl-train).
# Run it under `flock /tmp/mtl-heavy.lock` on a shared machine: it occupies every core.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

config=configs/shapes_seg.yaml
ranks="1 2 4"
batch=32
device=cpu
steps=5
reps=5
out=""
fixed_threads=""
sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --ranks) ranks="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --threads) fixed_threads="$2"; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench_dist.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
MTL="${MTL:-target/release/mtl-train}"
[ -x "$MTL" ] || { echo "bench_dist.sh: $MTL not built (cargo build --release --features bench)" >&2; exit 2; }
out="${out:-runs/bench/$(date +%Y-%m-%d)-dist-$device.jsonl}"
mkdir -p "$(dirname "$out")"
cores=$(nproc)

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bench_world N [plain]: N ranks (plain: one process without a process group).
bench_world() {
  local n=$1 plain=${2:-} threads port pids=() rank code=0
  threads=${fixed_threads:-$(( cores / n ))}; [ "$threads" -ge 1 ] || threads=1
  local args=(bench "$config" --device "$device" --set "data.batch_size=$batch" --set "threads=$threads"
              --warmup 3 --steps "$steps" --reps "$reps" --json "$out" "${sets[@]}")
  if [ -n "$plain" ]; then
    echo "== 1 process (no process group), $threads threads" >&2
    "$MTL" "${args[@]}"
    return
  fi
  port=$(free_port)
  echo "== $n rank(s) on $device, $threads thread(s) each, batch $batch per rank" >&2
  for ((rank = 0; rank < n; rank++)); do
    RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$MTL" "${args[@]}" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || code=$?; done
  return $code
}

for n in $ranks; do
  if [ "$n" = 1 ]; then bench_world 1 plain; fi
  bench_world "$n"
done
echo "results: $out" >&2
