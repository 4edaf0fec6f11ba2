#!/usr/bin/env bash
# The GPU check, in one call of about 12 minutes on a CUDA machine (under 8 with SPEED=0): the
# tests that need CUDA (NCCL's collectives and synchronized BatchNorm among them), shapes_seg
# trained for a few epochs in fp32 and in bf16, data-parallel training through NCCL (a world of
# one on one GPU: the step and its collectives timed, and `--nproc 1` training against a plain
# run), the side-by-side benchmark against PyTorch (scripts/bench.sh --device cuda), the speed
# tables, and one table at the end.
#
# Binaries are built on the build machine and carried; nothing is installed on the GPU machine,
# which only needs python3 with torch 2.11 (the libtorch the binaries were linked against),
# pyyaml and safetensors:
#
#   scripts/gpu_check.sh --prepare     # here: builds target/gpu/{mtl-train,mtl-lib-tests}
#   scripts/gpu_check.sh               # there, from the repository root (carry target/gpu)
#
# Rehearsal on a machine without a GPU (the test suite runs it: tests/test_gpu_check.py):
#
#   scripts/gpu_check.sh --prepare && DRY=1 bash scripts/gpu_check.sh
#
# Every section then runs on the CPU with small data, and each row's detail says what the
# section measures on a GPU; a row that is not PASS in the rehearsal would fail on the GPU too.
#
# Environment: EPOCHS (default: the config's 5), BENCH=0 to skip the benchmark, QUICK=1 for a shorter one,
# DIST=0 to skip the data-parallel checks, NYU=0 to skip nyuv2_resnet50 (NYU_EPOCHS: its epochs, default 3),
# SPEED=0 to skip the speed tables (whole processes, input pipeline, methods at T = 2 and 8; ~4 minutes),
# OUT (a folder for the logs and results; default a temporary one), DRY=1 to rehearse the whole
# script on the CPU (small data, quick CPU benchmark) on a machine without a GPU, SMOKE=1 with
# DRY=1 for the smallest rehearsal that still runs every section (one step per benchmark case),
# TEST_FILTER (a name filter for the unit tests, e.g. cuda_), PY (a python with torch; default:
# the project's .venv/bin/python where it exists, else python3).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "${1:-}" = "--prepare" ]; then
  set -e
  bash scripts/setup.sh
  source scripts/env.sh
  cargo build --release --bins --features bench
  exe="$(cargo test --release --features bench --lib --no-run --message-format=json 2>/dev/null | python -c '
import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["target"]["kind"] == ["lib"]:
        print(j["executable"])')"
  mkdir -p target/gpu
  cp target/release/mtl-train target/gpu/mtl-train
  cp "$exe" target/gpu/mtl-lib-tests
  ls -la target/gpu
  echo "carry target/gpu and run: bash scripts/gpu_check.sh"
  exit 0
fi

started=$(date +%s)
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1 RUST_LOG="${RUST_LOG:-warn}"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
torch_lib="$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" || {
  echo "gpu_check: $PY cannot import torch"; exit 1; }
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
MTL="${MTL:-target/gpu/mtl-train}"
TESTS="${TESTS:-target/gpu/mtl-lib-tests}"
[ -x "$MTL" ] || { echo "gpu_check: $MTL is missing: run scripts/gpu_check.sh --prepare here and carry target/gpu"; exit 2; }

echo "== machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
echo "cpus $(nproc); mtl-train: $("$MTL" --version)"
ldd "$MTL" | grep -E "libtorch(_cuda)?\.so|not found" || true

dev=cuda
small=()
if [ "${DRY:-0}" = 1 ]; then
  dev=cpu
  small=(--set data.train_size=512 --set data.val_size=128 --set train.log_every=2)
  [ "${SMOKE:-0}" = 1 ] && small=(--set data.train_size=128 --set data.val_size=64 --set train.log_every=2)
  echo "DRY=1: rehearsal on the CPU; the CUDA tests skip themselves"
fi

rows=()   # "check|result|detail"
# row CHECK RESULT DETAIL ON_GPU: ON_GPU (what the section measures on a GPU) is added to the
# detail in a rehearsal, so a rehearsal shows the whole table a device run would fill.
row() {
  local detail="$3"
  [ "$dev" = cpu ] && detail+=" · on a GPU: $4"
  rows+=("$1|$2|$detail")
}

echo "== CUDA tests (library unit tests; the cuda_* ones need a GPU, the rest run on its CPU)"
t0=$(date +%s)
if [ -x "$TESTS" ]; then
  "$TESTS" ${TEST_FILTER:+"$TEST_FILTER"} --test-threads=4 2>&1 | tee "$out/tests.log" | grep -E "^test .*(cuda|FAILED)|^test result|panicked" || true
  summary="$(grep -E '^test result' "$out/tests.log" | tail -1)"
  cuda_ok=$(grep -cE '^test .*cuda_.* ok$' "$out/tests.log" || true)
  cuda_failed=$(grep -cE '^test .*cuda_.* FAILED$' "$out/tests.log" || true)
  skipped=$(grep -c 'skipped: no CUDA' "$out/tests.log" || true)
  if grep -q 'test result: ok' "$out/tests.log" && { [ "$skipped" = 0 ] || [ "$dev" = cpu ]; }; then res=PASS; else res=FAIL; fi
  [ "$dev" = cpu ] && cuda_ok="0 (no GPU: the $cuda_ok cuda_* tests returned early)"
  row "unit tests (lib)" "$res" "$cuda_ok cuda tests ok, $cuda_failed failed, $skipped skipped; ${summary#test result: } ($(( $(date +%s) - t0 ))s)" \
    "the cuda_* tests run (NCCL collectives, synchronized BatchNorm, CUDA steps against the CPU, bf16 master weights)"
else
  row "unit tests (lib)" "MISSING" "$TESTS not carried" "the cuda_* tests"
fi

epochs=(); [ -n "${EPOCHS:-}" ] && epochs=(--set "train.epochs=$EPOCHS")
echo "== shapes_seg, ${EPOCHS:-5} epochs, fp32 and bf16 on $dev"
for prec in fp32 bf16; do
  t0=$(date +%s)
  dir="$(mktemp -d)/run-$prec"
  if "$MTL" configs/shapes_seg.yaml --device "$dev" --run-dir "$dir" --set "precision=$prec" \
      "${epochs[@]}" "${small[@]}" > "$out/train-$prec.log" 2>&1; then
    cp "$dir/metrics.jsonl" "$out/metrics-$prec.jsonl" 2>/dev/null || true
    detail="$("$PY" - "$dir/metrics.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
val = [r for r in rows if r.get("split") == "val"][-1]
ips = [r["images_per_second"] for r in rows if r.get("split") == "train" and "images_per_second" in r]
keys = [k for k in ("kind.accuracy", "seg.miou", "kind.loss", "seg.loss") if k in val]
speed = f"; {statistics.median(ips):.0f} img/s (median of log rows)" if ips else ""
print(", ".join(f"{k} {val[k]:.3f}" for k in keys) + speed)
EOF
)"
    row "train shapes_seg $prec" PASS "$detail ($(( $(date +%s) - t0 ))s)" \
      "accuracy, mIoU and img/s of the default config trained in $prec"
  else
    row "train shapes_seg $prec" FAIL "exit $?; see train-$prec.log: $(tail -1 "$out/train-$prec.log")" \
      "accuracy, mIoU and img/s of the default config trained in $prec"
  fi
  tail -3 "$out/train-$prec.log"
done

if [ "${DIST:-1}" = 1 ]; then
  # One GPU here: a world of one through NCCL (Gloo on the CPU with DRY=1). The collectives run
  # for real (NCCL all-reduces the whole gradient buffer on the device), so the bench gives the
  # step time with them, their time alone and their volume: the numbers docs/results/BENCHMARKS.md
  # projects to 8 GPUs from.
  backend=NCCL; [ "$dev" = cpu ] && backend=Gloo
  echo "== data-parallel through $backend: a world of one"
  cifar=(configs/cifar_seg.yaml --set data.dataset=shapes --set tasks.0.target=kind --set tasks.1.classes=11
         --set data.train_size=2048 --set data.val_size=256 --set data.download=false)
  dist_batch=128; dist_steps=(--warmup 3 --steps 10 --reps 5)
  [ "$dev" = cpu ] && { dist_batch=8; dist_steps=(--warmup 1 --steps 2 --reps 2); }
  [ "$dev" = cpu ] && [ "${SMOKE:-0}" = 1 ] && dist_steps=(--warmup 0 --steps 1 --reps 1)
  for model in shapes_seg cifar_seg; do
    if [ "$model" = shapes_seg ]; then args=(configs/shapes_seg.yaml); else args=("${cifar[@]}"); fi
    t0=$(date +%s)
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$MTL" bench "${args[@]}" --device "$dev" --set "data.batch_size=$dist_batch" "${dist_steps[@]}" \
        --json "$out/dist.jsonl" > "$out/dist-$model-plain.log" 2>&1
    if RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        "$MTL" bench "${args[@]}" --device "$dev" --set "data.batch_size=$dist_batch" "${dist_steps[@]}" \
        --json "$out/dist.jsonl" > "$out/dist-$model.log" 2>&1; then
      plain="$(grep -oE '[0-9.]+ img/s' "$out/dist-$model-plain.log" | head -1)"
      got="$(grep -oE '[0-9.]+ img/s|step [0-9.]+ ms, collectives .*' "$out/dist-$model.log" | tr '\n' ' ')"
      row "$backend world of 1: $model bs=$dist_batch" PASS "$got(plain: $plain; $(( $(date +%s) - t0 ))s)" \
        "$model's step at batch 128 through NCCL: step time, the collectives' time and volume"
    else
      row "$backend world of 1: $model" FAIL "see dist-$model.log: $(tail -1 "$out/dist-$model.log")" \
        "$model's step at batch 128 through NCCL"
    fi
    tail -2 "$out/dist-$model.log"
  done
  # --nproc 1 trains through the process group what a plain run trains (rounding aside).
  t0=$(date +%s)
  d="$(mktemp -d)"
  depochs=(--set train.epochs=2)
  [ "${SMOKE:-0}" = 1 ] && depochs=(--set train.epochs=1)
  "$MTL" configs/shapes_seg.yaml --device "$dev" --run-dir "$d/plain" "${depochs[@]}" "${small[@]}" > "$out/dist-plain.log" 2>&1
  if "$MTL" configs/shapes_seg.yaml --device "$dev" --run-dir "$d/nproc1" --nproc 1 "${depochs[@]}" "${small[@]}" \
      > "$out/dist-nproc1.log" 2>&1; then
    detail="$("$PY" - "$d/plain" "$d/nproc1" <<'EOF'
import json, sys
from safetensors.torch import load_file
def final(run):
    name = open(f"{run}/checkpoints/LATEST").read().strip()
    return load_file(f"{run}/checkpoints/{name}/model.safetensors")
def val(run):
    return [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"val"' in l][-1]
a, b = final(sys.argv[1]), final(sys.argv[2])
diff = max(float((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp_min(1e-12)) for k in a)
va, vb = val(sys.argv[1]), val(sys.argv[2])
print(f"weights differ by {diff:.1e} (relative); seg.miou {va['seg.miou']:.4f} vs {vb['seg.miou']:.4f}")
EOF
)"
    row "--nproc 1 through $backend vs plain" PASS "$detail ($(( $(date +%s) - t0 ))s)" \
      "weights and mIoU of --nproc 1 through NCCL against a plain run"
  else
    row "--nproc 1 through $backend vs plain" FAIL "see dist-nproc1.log: $(tail -1 "$out/dist-nproc1.log")" \
      "weights and mIoU of --nproc 1 through NCCL against a plain run"
  fi
fi

if [ "${NYU:-1}" = 1 ]; then
  # LibMTL's NYUv2 setting (configs/nyuv2_resnet50.yaml: dilated ResNet-50 from ImageNet weights,
  # ASPP heads) for a few epochs, its metrics beside LibMTL's published HPS + EW table
  # (docs/PRETRAINED.md). It needs data/nyuv2 and the ResNet-50 weights in the cache (or
  # MTL_WEIGHTS_MIRROR): the GPU machine reaches no network, so without them the row says SKIP.
  # The rehearsal trains one epoch on a generated NYUv2 of 32×48 images (4 train, 2 val) from
  # random torchvision weights.
  echo "== nyuv2_resnet50 (LibMTL's NYUv2 setting), ${NYU_EPOCHS:-3} epochs on $dev"
  t0=$(date +%s)
  d="$(mktemp -d)"
  nyu=(--set "train.epochs=${NYU_EPOCHS:-3}" --set checkpoint.every=1000 --set data.download=false)
  ready=1; why=""
  if [ "$dev" = cpu ]; then
    "$PY" - "$d" <<'EOF' || ready=0
import os, sys
import numpy as np, torch, torchvision
d = sys.argv[1]
rng = np.random.default_rng(0)
for split, n in (("train", 4), ("val", 2)):
    for m, shape in (("image", (32, 48, 3)), ("label", (32, 48)), ("depth", (32, 48, 1)), ("normal", (32, 48, 3))):
        os.makedirs(f"{d}/nyuv2/{split}/{m}", exist_ok=True)
        for i in range(n):
            a = rng.random(shape, dtype=np.float32)
            if m == "label":
                a = np.floor(a * 13)
            elif m == "normal":
                a = 2 * a - 1
                a /= np.linalg.norm(a, axis=-1, keepdims=True)
            np.save(f"{d}/nyuv2/{split}/{m}/{i}.npy", a)
if os.environ.get("SMOKE", "0") != "1":
    m = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    torch.save(m.state_dict(), f"{d}/resnet50-random.pth")
EOF
    nyu+=(--set "data.root=$d/nyuv2" --set data.image_size=32 --set data.batch_size=2 --set data.eval_batch_size=2
          --set "model.backbone.pretrained=$d/resnet50-random.pth" --set train.epochs=1)
    # The smallest rehearsal: a ResNet-50 at base width 4 from scratch (the weights' loading is
    # tests/test_pretrained.py's); the heads, the data and the table are the same.
    [ "${SMOKE:-0}" = 1 ] && nyu+=(--set "model.backbone={kind: resnet50, output_stride: 8, widths: [4]}"
                                  --set "model.heads.semantic.decoder_width=8" --set "model.heads.depth.decoder_width=8"
                                  --set "model.heads.normal.decoder_width=8")
  else
    cache="${MTL_WEIGHTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtl/weights}"
    if [ ! -d data/nyuv2/train ]; then
      ready=0; why="no data/nyuv2 on this machine (scripts/fetch.sh nyuv2, then carry it)"
    elif [ ! -f "$cache/resnet50-0676ba61.pth" ] && [ -z "${MTL_WEIGHTS_MIRROR:-}" ]; then
      ready=0; why="no resnet50-0676ba61.pth in $cache and no MTL_WEIGHTS_MIRROR"
    fi
  fi
  nyu_gpu="semantic mIoU / pixel acc, depth abs err, normal mean angle after a few epochs, beside LibMTL's 200-epoch 54.10 / 75.78, 0.3771, 23.53°"
  if [ "$ready" = 1 ] && "$MTL" configs/nyuv2_resnet50.yaml --device "$dev" --run-dir "$d/run" "${nyu[@]}" \
      > "$out/nyuv2_resnet50.log" 2>&1; then
    detail="$("$PY" - "$d/run/metrics.jsonl" <<'EOF'
import json, sys
val = [json.loads(l) for l in open(sys.argv[1]) if '"val"' in l][-1]
published = [("semantic.miou", 100, "mIoU", 54.10), ("semantic.pixel_accuracy", 100, "pixel acc", 75.78),
             ("depth.abs_error", 1, "abs err", 0.3771), ("normal.mean_angle", 1, "mean angle", 23.53)]
print("; ".join(f"{name} {val[k] * scale:.4g} (LibMTL {ref})" for k, scale, name, ref in published))
EOF
)"
    row "nyuv2_resnet50 vs LibMTL" PASS "$detail ($(( $(date +%s) - t0 ))s)" "$nyu_gpu"
  elif [ "$ready" = 0 ] && [ "$dev" != cpu ]; then
    row "nyuv2_resnet50 vs LibMTL" SKIP "$why" "$nyu_gpu"
  else
    row "nyuv2_resnet50 vs LibMTL" FAIL "see nyuv2_resnet50.log: $(tail -1 "$out/nyuv2_resnet50.log" 2>/dev/null)" "$nyu_gpu"
  fi
  tail -3 "$out/nyuv2_resnet50.log" 2>/dev/null
  rm -rf "$d"
fi

bench_table=""
if [ "${BENCH:-1}" = 1 ]; then
  echo "== benchmark (scripts/bench.sh --device $dev)"
  bench_on_gpu="mtl against PyTorch eager (and torch.compile in bf16) on the default and cifar_seg models, fp32 and bf16, batch 128"
  t0=$(date +%s)
  quick=(); [ "${QUICK:-0}" = 1 ] || [ "$dev" = cpu ] && quick=(--quick)
  [ "$dev" = cpu ] && quick+=(--rounds 1 --threads 1)
  [ "$dev" = cpu ] && [ "${SMOKE:-0}" = 1 ] && quick=(--smoke --rounds 1 --threads 1)
  if MTL="$MTL" PY="$PY" bash scripts/bench.sh --device "$dev" --no-build --out "$out/bench.jsonl" "${quick[@]}" \
      > "$out/bench.log" 2>&1; then
    row "benchmark" PASS "$(( $(date +%s) - t0 ))s; results in bench.jsonl" "$bench_on_gpu"
  else
    row "benchmark" FAIL "see bench.log: $(tail -1 "$out/bench.log")" "$bench_on_gpu"
  fi
  grep -vE '^\|' "$out/bench.log" | tail -25
  [ -s "$out/bench.jsonl" ] && bench_table="$("$PY" scripts/bench_torch.py --table "$out/bench.jsonl")"
fi

speed_tables=""
if [ "${SPEED:-1}" = 1 ]; then
  # docs/results/BENCHMARKS.md's three speed tables: whole training processes against an independent
  # PyTorch loop (start-up cancelled), the input pipeline against DataLoader (a CPU table: decoding
  # runs on the host's cores), and gradient methods at T = 2 and 8 tasks against static weighting.
  echo "== speed tables (bench_process.py, bench_input.py, bench.sh --balance --tasks) on $dev"
  t0=$(date +%s)
  proc=(--batch 128 --n1 5 --n2 45 --rounds 1 --variants eager,cl,fused)   # 54 steps per epoch at 128
  inp=(--images 1000 --workers "$(nproc)" --rounds 2 --batches 40)
  tasks="2 8"; methods="mgda pcgrad cagrad nash upgrad"
  if [ "$dev" = cpu ]; then
    proc=(--batch 16 --n1 2 --n2 6 --rounds 1 --variants eager --threads 1)
    inp=(--images 200 --workers 1 --rounds 1 --batches 5)
    tasks="2"; methods="mgda"
    if [ "${SMOKE:-0}" = 1 ]; then
      proc=(--batch 8 --n1 1 --n2 4 --rounds 1 --variants eager --threads 1)
      inp=(--images 64 --batch 8 --workers 1 --rounds 1 --batches 2)   # 3 start-up + 2 timed batches
    fi
  fi
  ok=PASS
  "$PY" scripts/bench_process.py --mtl "$MTL" --device "$dev" "${proc[@]}" \
    > "$out/speed-process.log" 2>&1 || ok=FAIL
  if "$PY" -c 'import PIL, numpy' 2>/dev/null; then
    "$PY" scripts/bench_input.py --mtl "$MTL" "${inp[@]}" > "$out/speed-input.log" 2>&1 || ok=FAIL
    if [ "$dev" = cuda ]; then
      # Decode threads that scale (issue 29): photo-like JPEGs, mtl alone at 2, 4, 8, 16 threads.
      "$PY" scripts/bench_input.py --mtl "$MTL" --entropy photo --images 800 --no-masks --sides mtl \
        --sweep 2,4,8,16 --rounds 1 --batches 40 >> "$out/speed-input.log" 2>&1 || ok=FAIL
    fi
  else
    echo "no PIL/numpy in $PY: input pipeline table skipped" > "$out/speed-input.log"
  fi
  balance_smoke=(); [ "$dev" = cpu ] && [ "${SMOKE:-0}" = 1 ] && balance_smoke=(--smoke)
  MTL="$MTL" PY="$PY" bash scripts/bench.sh --device "$dev" --no-build --rounds 1 --balance "$methods" --tasks "$tasks" "${balance_smoke[@]}" \
    --out "$out/speed-balance.jsonl" > "$out/speed-balance.log" 2>&1 || ok=FAIL
  row "speed tables" "$ok" "$(( $(date +%s) - t0 ))s; speed-*.log" \
    "whole training processes against PyTorch at batch 128, the input pipeline against DataLoader with $(nproc) workers, gradient methods at T = 2 and 8"
  speed_tables="$(grep -hE '^\||^[a-z_0-9]+, (cpu|cuda)|images/s' "$out/speed-process.log" "$out/speed-input.log" 2>/dev/null)"
  [ -s "$out/speed-balance.jsonl" ] && speed_tables+=$'\n\n'"$("$PY" scripts/bench_torch.py --table "$out/speed-balance.jsonl")"
fi

echo
echo "== gpu_check summary ($(( $(date +%s) - started ))s; logs in $out)"
printf '| %s | %s | %s |\n' check result detail
printf '|---|---|---|\n'
for r in "${rows[@]}"; do
  IFS='|' read -r a b c <<< "$r"
  printf '| %s | %s | %s |\n' "$a" "$b" "$c"
done
if [ -n "$bench_table" ]; then
  echo
  echo "$bench_table"
fi
if [ -n "$speed_tables" ]; then
  echo
  echo "$speed_tables"
fi
# A row that is not PASS fails the check (the test suite's rehearsal relies on it).
for r in "${rows[@]}"; do
  IFS='|' read -r _ result _ <<< "$r"
  [ "$result" = PASS ] || exit 1
done
