# Sourced by the other scripts: points the build at the project-local libtorch in .venv.
# Usage: source scripts/env.sh
MTL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$MTL_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
# torch's wheel ships its own OpenMP; keep the tch build from trying a system libtorch.
unset LIBTORCH LIBTORCH_LIB LIBTORCH_INCLUDE
