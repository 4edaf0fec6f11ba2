#!/usr/bin/env bash
# Creates .venv with the PyTorch 2.11.0 wheel (libtorch for the build) and the packages the
# Python tests need: interop (safetensors, numpy, pyyaml, pytest), the balancing cross-check
# (scipy), TensorBoard's own readers and server (tensorboard), the ONNX export and its check
# (onnx, onnxscript, onnxruntime), torchvision's own ResNets and DeepLab heads as the reference for
# mtl's (torchvision), scikit-learn's AUC as the reference for mtl's, and Parquet files written
# for the table tests (pyarrow). Idempotent: a second run only checks and returns in about a second.
#
# With a CUDA build of torch it also installs the CUDA headers that the NCCL backend of the
# c10d shim (csrc/dist/) compiles against and the torch wheels do not ship: nvidia-cuda-crt and
# nvidia-cuda-cccl (headers only, ~4 MB, for torch's CUDA version). Without them the build
# still trains on one GPU, but not data-parallel across GPUs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
want_torch="2.11.0"
want_torchvision="0.26.0"
py="${PYTHON:-python3}"

check() {
  "$venv/bin/python" - "$want_torch" <<'PY' 2>/dev/null
import sys, torch, safetensors, numpy, scipy, yaml, pytest, tensorboard, onnx, onnxscript, onnxruntime
import torchvision, sklearn, pyarrow
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
}

# The header wheels for torch's CUDA version ("13.0" -> nvidia-cuda-crt==13.0.*), or nothing
# for a CPU build or a CUDA version without such wheels.
cuda_header_packages() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
import torch
v = torch.version.cuda or ""
if v.startswith("13."):
    print(f"nvidia-cuda-crt=={v}.* nvidia-cuda-cccl=={v}.*")
PY
}

cuda_headers_present() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
import glob, os, sys, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
found = lambda pattern: glob.glob(os.path.join(site, "nvidia", "*", "include", pattern))
sys.exit(0 if found("crt/host_defines.h") and found("cccl/cuda/std/type_traits") else 1)
PY
}

# libjpeg-turbo's headers and library for mtl's JPEG decoder (build.rs, csrc/jpeg/); without
# them the build decodes JPEGs with zune-jpeg, slower on photos (docs/DECISIONS.md, "JPEG
# decoding"). Installed here when this runs as root on a Debian-like system.
if [ ! -f /usr/include/jpeglib.h ] && [ -z "${MTL_JPEG_INCLUDE:-}" ]; then
  jpeg_install() { apt-get install -y -qq libjpeg62-turbo-dev || apt-get install -y -qq libjpeg-turbo8-dev; }
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing libjpeg-turbo's headers for the JPEG decoder" >&2
    { jpeg_install || { apt-get update -qq && jpeg_install; }; } >/dev/null 2>&1 ||
      echo "setup: could not install libjpeg62-turbo-dev; JPEGs will be decoded with zune-jpeg" >&2
  else
    echo "setup: no /usr/include/jpeglib.h: JPEGs will be decoded with zune-jpeg; for libjpeg-turbo" \
      "install libjpeg62-turbo-dev (Debian) or libjpeg-turbo8-dev (Ubuntu) and rebuild" >&2
  fi
fi

if [ -x "$venv/bin/python" ] && check; then
  headers="$(cuda_header_packages || true)"
  if [ -z "$headers" ] || cuda_headers_present; then
    exit 0
  fi
else
  echo "setup: installing torch==$want_torch and test packages into $venv (a few minutes, ~4.7 GB)" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$want_torch" "torchvision==$want_torchvision" safetensors numpy scipy pyyaml pytest tensorboard \
    onnx onnxscript onnxruntime scikit-learn pyarrow
  check || { echo "setup: torch $want_torch did not install correctly in $venv" >&2; exit 1; }
  headers="$(cuda_header_packages || true)"
fi
if [ -n "$headers" ] && ! cuda_headers_present; then
  echo "setup: installing CUDA headers for the NCCL backend ($headers)" >&2
  # shellcheck disable=SC2086 # two package specs
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps $headers ||
    echo "setup: could not install $headers; the build will have no NCCL backend" >&2
fi
echo "setup: done" >&2
