#!/usr/bin/env bash
# One-shot GPU check: build the extension from this checkout, run the test suite and the
# CUDA micro-benchmarks. For a GPU machine with torch (CUDA build) preinstalled and no
# network. Results go to $OUT if set, else ./gpu_results/. Budget: < 8 minutes on an H200.
#   bash benchmarks/gpu_check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RESULTS="${OUT:-$ROOT/gpu_results}"
mkdir -p "$RESULTS"
PY="${PYTHON:-python3}"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

note "== gpu_check $(date -u +%FT%TZ) in $ROOT"
{
  nvidia-smi || echo "nvidia-smi not available"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())'
  command -v nvcc && nvcc --version | tail -2 || echo "nvcc not on PATH"
} > "$RESULTS/env.txt" 2>&1 || true
cat "$RESULTS/env.txt"

missing=""
for mod in pytest hypothesis numpy transformers; do
  if ! "$PY" -c "import $mod" > /dev/null 2>&1; then missing="$missing $mod"; fi
done
note "missing python modules:${missing:- none}"

# ---- build (all cores; sm_90 unless TORCH_CUDA_ARCH_LIST is set) ----
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
build_rc=0
timeout 210 "$PY" setup.py build_ext --inplace > "$RESULTS/build_log.txt" 2>&1 || build_rc=$?
note "build: rc=$build_rc (log: build_log.txt)"
if [ "$build_rc" -ne 0 ]; then
  tail -40 "$RESULTS/build_log.txt"
  note "build failed: stopping"
  exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import hydrogen_ops, torch; print("hydrogen_ops from", hydrogen_ops.__file__, "cuda ops:", torch.cuda.is_available())' 2>&1 | tee -a "$SUMMARY"

# ---- tests ----
test_rc=0
if [[ " $missing " == *" pytest "* ]]; then
  note "pytest is missing: carry it as a wheel (tests not run)"
  test_rc=1
else
  timeout 150 "$PY" -m pytest tests -q -rs 2>&1 | tee "$RESULTS/test_log.txt" || test_rc=${PIPESTATUS[0]}
fi
note "tests: rc=$test_rc (log: test_log.txt)"
tail -5 "$RESULTS/test_log.txt" >> "$SUMMARY" || true

# ---- benchmarks ----
bench_rc=0
timeout 100 "$PY" benchmarks/attention_cuda.py --out "$RESULTS/bench_attention_cuda.json" \
  > "$RESULTS/bench_attention_cuda.md" 2> "$RESULTS/bench_log.txt" || bench_rc=$?
note "benchmarks: rc=$bench_rc (bench_attention_cuda.md / .json)"
cat "$RESULTS/bench_attention_cuda.md" | tee -a "$SUMMARY" || true

note "== done: build=$build_rc tests=$test_rc bench=$bench_rc; results in $RESULTS"
if [ "$test_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ]; then exit 1; fi
