#!/usr/bin/env bash
# Creates .venv with the PyTorch 2.11.0 wheel (libtorch for the build) and the packages the
# Python tests need: interop (safetensors, numpy, pyyaml, pytest), TensorBoard's own readers
# and server (tensorboard), the ONNX export and its check (onnx, onnxscript, onnxruntime).
# Idempotent: a second run only checks and returns in about a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
want_torch="2.11.0"
py="${PYTHON:-python3}"

check() {
  "$venv/bin/python" - "$want_torch" <<'PY' 2>/dev/null
import sys, torch, safetensors, numpy, scipy, yaml, pytest, tensorboard, onnx, onnxscript, onnxruntime
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
PY
}

if [ -x "$venv/bin/python" ] && check; then
  exit 0
fi
echo "setup: installing torch==$want_torch and test packages into $venv (a few minutes, ~4.7 GB)" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "torch==$want_torch" safetensors numpy scipy pyyaml pytest tensorboard onnx onnxscript onnxruntime
check || { echo "setup: torch $want_torch did not install correctly in $venv" >&2; exit 1; }
echo "setup: done" >&2
