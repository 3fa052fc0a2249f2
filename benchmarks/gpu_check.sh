#!/usr/bin/env bash
# One-shot GPU check: build the extension from this checkout, run the whole test suite, then
# the CUDA benchmarks in order of importance (attention micro-benchmarks, the attention
# sweep, end-to-end generation with the no-attention ceiling, hierarchical sharing) while
# the time budget lasts. For a GPU machine with torch (CUDA build) preinstalled and no
# network. Results go to $OUT if set, else ./gpu_results/: the summary, the test log and the
# benchmark JSONs, plus every log and plot in gpu_check_all.tar.gz (few files to fetch).
# The whole script stays within GPU_CHECK_BUDGET seconds (default 450, under 8 minutes):
# each step gets at most what is left, and a step that would get under 30 s is skipped.
#   bash benchmarks/gpu_check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="${OUT:-$ROOT/gpu_results}"
mkdir -p "$DEST"
RESULTS="$(mktemp -d)"
finish() {
  cp "$RESULTS"/summary.txt "$RESULTS"/test_log.txt "$RESULTS"/*.json "$DEST"/ 2> /dev/null || true
  tar czf "$DEST/gpu_check_all.tar.gz" -C "$RESULTS" .
}
trap finish EXIT
PY="${PYTHON:-python3}"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-450}"
# step_time WANT: seconds a step may take: WANT, or what is left of the budget (minus 10 s).
step_time() {
  local left=$(( BUDGET - ($(date +%s) - START) - 10 ))
  if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

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
timeout "$(step_time 210)" "$PY" setup.py build_ext --inplace > "$RESULTS/build_log.txt" 2>&1 || build_rc=$?
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
  timeout "$(step_time 200)" "$PY" -m pytest tests -q -rs 2>&1 | tee "$RESULTS/test_log.txt" || test_rc=${PIPESTATUS[0]}
fi
note "tests: rc=$test_rc (log: test_log.txt)"
tail -5 "$RESULTS/test_log.txt" >> "$SUMMARY" || true

# ---- benchmarks, most important first, while the budget lasts ----
bench_rc=0
# run_step NAME WANT_SECONDS COMMAND...: runs with stdout to NAME.md, stderr to NAME_log.txt.
run_step() {
  local name=$1 want=$2 rc=0 t
  shift 2
  t=$(step_time "$want")
  if [ "$t" -lt 30 ]; then
    note "$name: skipped (time budget spent)"
    return 0
  fi
  timeout "$t" "$@" > "$RESULTS/$name.md" 2> "$RESULTS/${name}_log.txt" || rc=$?
  note "$name: rc=$rc ($name.md, log ${name}_log.txt)"
  tee -a "$SUMMARY" < "$RESULTS/$name.md" || true
  [ "$rc" -eq 0 ] || bench_rc=$rc
}
run_step attention_cuda 100 "$PY" benchmarks/attention_cuda.py --out "$RESULTS/attention_cuda.json"
run_step attention_sweep_cuda 150 "$PY" benchmarks/attention_sweep.py --device cuda --out "$RESULTS/attention_sweep_cuda.json"
if [[ " $missing " == *" transformers "* ]]; then
  note "end-to-end: skipped (transformers missing)"
else
  LLAMA=(--device cuda --hidden 4096 --intermediate 11008 --heads 32 --kv-heads 8 --layers 4 --vocab 32000 --kv-limit-gb 60)
  run_step hf_generate_cuda 150 "$PY" benchmarks/hf_generate.py "${LLAMA[@]}" --batches 64 256 \
    --prefixes 1024 4096 16384 --new-tokens 32 --repeats 3 --out "$RESULTS/hf_generate_cuda.json"
  run_step hierarchical_cuda 90 "$PY" benchmarks/hierarchical.py "${LLAMA[@]}" --new-tokens 32 --repeats 3 \
    --out "$RESULTS/hierarchical_cuda.json"
fi

note "== done: build=$build_rc tests=$test_rc bench=$bench_rc; results in $DEST"
if [ "$test_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ]; then exit 1; fi
