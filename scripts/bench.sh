#!/usr/bin/env bash
# Side-by-side speed: mtl's training step (`mtl-train bench`) against an idiomatic PyTorch eager
# loop (scripts/bench_torch.py) on the same model built from the same config, the same initial
# weights, the same data resident on the device, the same batch size, optimizer, augmentation
# (crop + flip on the device, both sides) and thread count. Warm-up excluded. The two sides run
# as two processes in lockstep: their timed repetitions (STEPS steps each) alternate, one side
# idle while the other is timed, so drifting machine load hits both alike; ROUNDS rounds, the
# side that goes first switching each round. The table pools every repetition: median
# [min–max] images/s per side, the ratio of the medians, and the paired ratios (repetition k of
# mtl over repetition k of PyTorch): their median and range. Peak RSS (CPU) and device memory
# (CUDA) per side.
#
#   scripts/bench.sh                    # CPU: default config at batch 16 and 128, cifar_seg's model at 16
#   scripts/bench.sh --device cuda      # CUDA: fp32 and bf16, PyTorch eager and torch.compile (bf16)
#   THREADS=1 ROUNDS=3 scripts/bench.sh --quick
#
# Options: --device cpu|cuda (default cpu), --threads N (default: nproc; both sides),
#   --rounds N (default 2), --quick (fewer steps), --smoke (the GPU's case list, fp32 only off CUDA,
#   one step per repetition at batch 8 and no torch.compile; with --balance, one step at batch 8:
#   proves every case runs, measures nothing; the GPU check's CPU rehearsal uses it), --extra (also PyTorch with channels_last and
#   with the fused optimizer, each in lockstep with mtl), --ab (also mtl against itself with channels-last and the fused CPU
#   optimizer off: the "before" of docs/results/BENCHMARKS.md), --out FILE.jsonl (results; default
#   runs/bench/<date>-<device>.jsonl), --no-build, --balance "M1 M2 ..." (instead of the cases
#   above: static weighting against each gradient method in both spaces, default config at its
#   own batch size, mtl against itself in lockstep; docs/results/METHODS.md), --tasks "2 4 8" (with --balance:
#   the same at each task count T, on the default config with T tasks: shapes' four targets kind, seg,
#   count, color, repeated under new names and heads beyond four), --arch "A1 A2 ..." (instead: hard
#   sharing against each architecture, mtl against itself in lockstep, on --arch-config FILE, default
#   configs/shapes_methods.yaml, at its own batch size; docs/results/ARCHITECTURES.md). Environment: MTL (binary, default target/release/mtl-train), PY (python with
#   torch; default .venv/bin/python, else python3), COMPILE_FP32=1 (torch.compile for fp32 too),
#   COMPILE_TIMEOUT (seconds for each torch.compile run, default 180), BALANCE_STEPS / BALANCE_REPS
#   (steps per repetition and repetitions of --balance, default 4 and 5).
# The default CPU run takes about 3 minutes on a 2-core machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

device=cpu
threads="${THREADS:-$(nproc)}"
rounds="${ROUNDS:-2}"
quick=0
smoke=0
extra=0
ab=0
balance=""
task_counts=""
arch=""
arch_config=configs/shapes_methods.yaml
build=1
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --smoke) smoke=1; shift ;;
    --extra) extra=1; shift ;;
    --ab) ab=1; shift ;;
    --balance) balance="$2"; shift 2 ;;
    --tasks) task_counts="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --arch-config) arch_config="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

MTL="${MTL:-target/release/mtl-train}"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "$build" = 1 ] && [ -f scripts/env.sh ] && command -v cargo >/dev/null; then
  (source scripts/env.sh && cargo build --release --bins --features bench -q)
fi
[ -x "$MTL" ] || { echo "bench.sh: $MTL not found (cargo build --release --features bench, or set MTL=...)" >&2; exit 2; }
# The PyTorch side reads the datasets' normalization from this binary (mtl_torch.catalog).
MTL_BIN="${MTL_BIN:-$(cd "$(dirname "$MTL")" && pwd)/$(basename "$MTL")}"
export MTL_BIN

stamp="$(date -u +%Y%m%d-%H%M%S)"
out="${out:-runs/bench/$stamp-$device.jsonl}"
mkdir -p "$(dirname "$out")"
work="$(mktemp -d "${TMPDIR:-/tmp}/mtl-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export RUST_LOG="${RUST_LOG:-warn}"

# cifar_seg's model (ResNet-18 + U-Net decoder) on generated shapes data: the CIFAR-10 files
# need a download, and the step's cost does not depend on the pixels.
cifar=(configs/cifar_seg.yaml --set data.dataset=shapes --set tasks.0.target=kind --set tasks.1.classes=11
       --set data.train_size=2048 --set data.val_size=256 --set data.download=false)

# Waits for two background processes; if one fails, stops the other. Fails if either failed.
wait_pair() {
  local a="$1" b="$2" ra=0 rb=0
  while kill -0 "$a" 2>/dev/null && kill -0 "$b" 2>/dev/null; do sleep 0.2; done
  if ! kill -0 "$a" 2>/dev/null; then
    wait "$a" || ra=$?
    [ "$ra" = 0 ] || kill "$b" 2>/dev/null || true
    wait "$b" || rb=$?
  else
    wait "$b" || rb=$?
    [ "$rb" = 0 ] || kill "$a" 2>/dev/null || true
    wait "$a" || ra=$?
  fi
  [ "$ra" = 0 ] && [ "$rb" = 0 ]
}

# lockstep FIFO_DIR ROUND A... :: B... runs the benchmark commands A and B in lockstep
# (their repetitions alternate through FIFO_DIR, whose name pairs their records); A takes the
# first turn in odd rounds, B in even ones.
lockstep() {
  local fifo="$1" round="$2" a=() b=()
  shift 2
  while [ "$1" != "::" ]; do a+=("$1"); shift; done
  shift
  b=("$@")
  mkdir -p "$fifo" && mkfifo "$fifo/first.fifo" "$fifo/second.fifo"
  local aflag=() bflag=(--lockstep-second)
  if [ $((round % 2)) = 0 ]; then aflag=(--lockstep-second); bflag=(); fi
  "${a[@]}" --lockstep "$fifo" "${aflag[@]}" &
  local pa=$!
  "${b[@]}" --lockstep "$fifo" "${bflag[@]}" &
  local pb=$!
  wait_pair "$pa" "$pb"
}

# run_case NAME PRECISION BATCH WARMUP STEPS REPS -- CONFIG ARGS...
# Every round runs mtl and PyTorch eager side by side in lockstep (their repetitions alternate,
# the first turn switching sides every round); extra variants run alone afterwards.
run_case() {
  local name="$1" prec="$2" batch="$3" warmup="$4" steps="$5" reps="$6"
  shift 7
  local dir="$work/$name-$prec-$batch"
  local dev="$device"
  local common=(--warmup "$warmup" --steps "$steps" --reps "$reps" --json "$out")
  local sets=(--set "threads=$threads" --set "data.batch_size=$batch" --set "precision=$prec" --device "$dev")
  echo "== $name $dev $prec batch $batch threads $threads (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$MTL" bench "$@" "${sets[@]}" --warmup 0 --reps 0 --export "$dir"
  local torch=("$PY" scripts/bench_torch.py "$dir" --device "$dev" --threads "$threads")
  local mtl=("$MTL" bench "$@" "${sets[@]}" "${common[@]}")
  for ((r = 1; r <= rounds; r++)); do
    lockstep "$dir-eager-$r" "$r" "${mtl[@]}" :: "${torch[@]}" "${common[@]}" || { echo "bench.sh: $name failed" >&2; exit 1; }
  done
  if [ "$ab" = 1 ]; then
    # Before/after: mtl against itself with the speed switches off (config keys speed.*).
    local off=(--set speed.channels_last=false --set speed.fused_optimizer=false)
    for ((r = 1; r <= rounds; r++)); do
      lockstep "$dir-ab-$r" "$r" "${mtl[@]}" :: "${mtl[@]}" "${off[@]}" ||
        { echo "bench.sh: $name (A/B) failed" >&2; exit 1; }
    done
  fi
  if [ "$extra" = 1 ]; then
    # Hand-tuned PyTorch variants, each in lockstep with mtl like the eager loop.
    for variant in --channels-last --fused; do
      for ((r = 1; r <= rounds; r++)); do
        lockstep "$dir-$variant-$r" "$r" "${mtl[@]}" :: "${torch[@]}" "${common[@]}" "$variant" ||
          { echo "bench.sh: $name ($variant) failed" >&2; exit 1; }
      done
    done
  fi
  if [ "$gpu_cases" = 1 ]; then
    "$MTL" bench "$@" "${sets[@]}" "${common[@]}" --set speed.channels_last=false
    if [ "$dev" != cpu ] && { [ "$prec" = bf16 ] || [ "${COMPILE_FP32:-0}" = 1 ]; }; then
      # torch.compile compiles in its first calls (tens of seconds): a longer warm-up, one run,
      # bounded so a slow compile cannot eat the GPU check's budget.
      timeout "${COMPILE_TIMEOUT:-180}" "${torch[@]}" --warmup $((warmup + 5)) --steps "$steps" --reps "$reps" \
        --json "$out" --compile || echo "bench.sh: torch.compile run failed or passed ${COMPILE_TIMEOUT:-180}s; no row" >&2
    fi
  fi
}

# balance_case METHOD [CONFIG]: CONFIG's step (default: the default config) with static weighting
# against METHOD with per-task gradients w.r.t. the parameters and w.r.t. the representation.
balance_case() {
  local config=() sets=(--set "threads=$threads" --device "$device")
  local common=(--warmup 2 --steps "${BALANCE_STEPS:-4}" --reps "${BALANCE_REPS:-5}" --json "$out")
  [ "$smoke" = 1 ] && { sets+=(--set data.batch_size=8); common=(--warmup 0 --steps 1 --reps 1 --json "$out"); }
  [ -n "${2:-}" ] && config=("$2")
  local static=("$MTL" bench "${config[@]}" "${sets[@]}" "${common[@]}")
  echo "== balance: static vs $1 ${2:-} (load $(cut -d' ' -f1-3 /proc/loadavg))"
  for space in representation params; do
    for ((r = 1; r <= rounds; r++)); do
      lockstep "$work/balance-$(basename "${2:-default}" .yaml)-$1-$space-$r" "$r" "${static[@]}" :: "${static[@]}" \
        --set balance.method="$1" --set balance.on="$space" || { echo "bench.sh: $1 $space failed" >&2; exit 1; }
    done
  done
}

# tasks_config T: writes the default config with T tasks (named shapes_seg_tT) and prints its
# path. Shapes has four targets; tasks beyond four reuse them under new names, with their own heads.
tasks_config() {
  local file="$work/shapes_seg_t$1.yaml"
  "$PY" - "$1" "$file" <<'EOF'
import sys, yaml
t, path = int(sys.argv[1]), sys.argv[2]
cfg = yaml.safe_load(open("configs/shapes_seg.yaml"))
base = [dict(kind="classification", target="kind", classes=10),
        dict(kind="segmentation", target="mask", classes=11, ignore_index=255),
        dict(kind="classification", target="count", classes=3),
        dict(kind="classification", target="color", classes=6)]
tasks = []
for i in range(t):
    task = dict(base[i % len(base)])
    task["name"] = task["target"] if i < len(base) else f"{task['target']}{i // len(base) + 1}"
    tasks.append(task)
cfg.update(name=f"shapes_seg_t{t}", tasks=tasks)
cfg["model"]["heads"] = {}
cfg["checkpoint"].update(monitor="loss", mode="min")
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
EOF
  echo "$file"
}

# arch_case ARCHITECTURE: hard sharing against ARCHITECTURE on $arch_config, in lockstep.
arch_case() {
  local sets=(--set "threads=$threads" --device "$device") common=(--warmup 2 --steps 4 --reps 5 --json "$out")
  local hps=("$MTL" bench "$arch_config" "${sets[@]}" "${common[@]}")
  echo "== architecture: hps vs $1 on $arch_config (load $(cut -d' ' -f1-3 /proc/loadavg))"
  for ((r = 1; r <= rounds; r++)); do
    lockstep "$work/arch-$1-$r" "$r" "${hps[@]}" :: "${hps[@]}" --set model.architecture.kind="$1" ||
      { echo "bench.sh: $1 failed" >&2; exit 1; }
  done
}

# The GPU's case list runs on a GPU, and on the CPU with --smoke (the rehearsal of the GPU check).
gpu_cases=0
{ [ "$device" != cpu ] || [ "$smoke" = 1 ]; } && gpu_cases=1

if [ -n "$arch" ]; then
  for a in $arch; do arch_case "$a"; done
elif [ -n "$balance" ] && [ -n "$task_counts" ]; then
  for t in $task_counts; do
    cfg="$(tasks_config "$t")"
    for m in $balance; do balance_case "$m" "$cfg"; done
  done
elif [ -n "$balance" ]; then
  for m in $balance; do balance_case "$m"; done
elif [ "$gpu_cases" = 0 ]; then
  if [ "$quick" = 1 ]; then
    run_case default fp32 16 2 4 3 --
    run_case default fp32 128 1 1 3 --
    run_case cifar_seg fp32 16 1 1 3 -- "${cifar[@]}"
  else
    run_case default fp32 16 3 8 5 --
    run_case default fp32 128 2 2 5 --
    run_case cifar_seg fp32 16 1 2 3 -- "${cifar[@]}"
  fi
else
  b=128; w=10; s=20; r=5; precisions="fp32 bf16"
  [ "$quick" = 1 ] && { s=10; r=3; }
  [ "$smoke" = 1 ] && { b=8; w=0; s=1; r=1; }
  [ "$device" = cpu ] && precisions=fp32   # bf16 is for CUDA (bench_torch.py refuses it elsewhere)
  for prec in $precisions; do
    run_case default "$prec" "$b" "$w" "$s" "$r" --
    run_case cifar_seg "$prec" "$b" "$w" "$s" "$r" -- "${cifar[@]}"
  done
fi

echo
echo "mtl vs PyTorch, $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) × $(nproc), torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
if [ "$device" != cpu ]; then
  "$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0))' 2>/dev/null || true
fi
echo "augmentation: crop+flip on the device on both sides; optimizer as configured (AdamW for the default config, SGD-Nesterov for cifar_seg), foreach=True in PyTorch"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg); results: $out"
echo
"$PY" scripts/bench_torch.py --table "$out"
