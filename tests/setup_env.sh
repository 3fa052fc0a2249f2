# Sourced by tests/run.sh and benchmarks/demo.sh: creates .venv on first use, installs
# torch 2.14.1 (from this machine's local wheel store) and the test/demo dependencies,
# then builds the extension in place. Later runs only rebuild what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${HYDROGEN_VENV:-$ROOT/.venv}"
STAMP="$VENV/.hydrogen-deps-v1"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if [ ! -f "$STAMP" ]; then
  echo "==> installing torch 2.14.1 and the test dependencies (first run only, about 2 minutes)"
  python -m pip install --progress-bar on "torch==2.14.1" "transformers==5.17.0" \
    pytest hypothesis numpy ninja setuptools wheel \
    matplotlib tqdm nbclient nbformat ipykernel
  touch "$STAMP"
fi
echo "==> building hydrogen_ops (incremental)"
MAX_JOBS="${MAX_JOBS:-$(nproc)}" python setup.py -q build_ext --inplace
