#!/usr/bin/env bash
# One-shot GPU check, for a GPU machine with torch (CUDA build) preinstalled and no network:
#   1. build the extension from this checkout (sm_90 unless TORCH_CUDA_ARCH_LIST is set);
#   2. tests, in two lanes at once: the CUDA-strict files (tests/test_cuda.py,
#      test_hydragen_op.py, test_ops.py, test_nan_contract.py, test_api.py; any of them may
#      be absent), and beside them
#      compute-sanitizer memcheck and racecheck over benchmarks/sanitizer_cases.py (when the
#      tool is installed) followed by the rest of the suite. Each step has its own time budget;
#      a pytest step that runs out is interrupted (SIGINT) so that its JUnit XML is still written;
#   3. only if the CUDA tests ran: launches per call (torch.profiler), then the benchmarks that
#      feed the record (attention sweep, attention micro-benchmarks, FlexAttention at batch 1024,
#      prefix 16384), then end-to-end generation while the budget lasts;
#   4. on exit, whatever happened: benchmarks/gpu_record.py writes gpu_check.json from what exists
#      (fields not measured are null, with the reason under "missing").
# Results go to $OUT if set, else ./gpu_results/: gpu_check.json, the summary, logs and benchmark
# JSONs, plus everything in gpu_check_all.tar.gz. The whole script stays within GPU_CHECK_BUDGET
# seconds (default 450, under 8 minutes including the record): each step gets at most what is
# left, the tests leave BENCH_RESERVE seconds (default 120) to the benchmarks, and a step that
# would get too little time is skipped.
#   bash benchmarks/gpu_check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="${OUT:-$ROOT/gpu_results}"
mkdir -p "$DEST"
RESULTS="$(mktemp -d)"
PY="${PYTHON:-python3}"
SUMMARY="$RESULTS/summary.txt"
STATUS="$RESULTS/status.txt"
: > "$SUMMARY"
: > "$STATUS"
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-450}"
BENCH_RESERVE="${BENCH_RESERVE:-120}"
RECORD_RESERVE=25  # kept for writing the record at exit

note() { echo "$*" | tee -a "$SUMMARY"; }
status() { echo "$1=$2" >> "$STATUS"; }
# step_time WANT [KEEP]: seconds a step may take: WANT, or what is left of the budget after
# KEEP more seconds (for later steps) and the record.
step_time() {
  local left=$(( BUDGET - ($(date +%s) - START) - RECORD_RESERVE - ${2:-0} ))
  if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

finish() {
  status elapsed_s "$(( $(date +%s) - START ))"
  if timeout 60 "$PY" benchmarks/gpu_record.py assemble --results "$RESULTS" --out "$RESULTS/gpu_check.json" \
      > "$RESULTS/record_log.txt" 2>&1; then
    note "record: gpu_check.json written (commit it as benchmarks/results/gpu_check.json)"
  else
    note "record: gpu_record.py failed (record_log.txt)"
  fi
  cp "$RESULTS"/*.txt "$RESULTS"/*.json "$RESULTS"/*.md "$RESULTS"/*.xml "$DEST"/ 2> /dev/null || true
  tar czf "$DEST/gpu_check_all.tar.gz" -C "$RESULTS" . || true
  echo "== gpu_check.json"
  cat "$DEST/gpu_check.json" 2> /dev/null || echo "(not written)"
  echo "== record summary"
  cat "$RESULTS/record_log.txt" 2> /dev/null || true
  echo "== total $(( $(date +%s) - START )) s; results in $DEST"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

note "== gpu_check $(date -u +%FT%TZ) in $ROOT (budget ${BUDGET} s)"
status commit "$(git describe --always --dirty 2> /dev/null || echo unknown)"
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
status missing_modules "${missing# }"

# ---- 1. build (all cores) ----
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
build_rc=0
timeout "$(step_time 240)" "$PY" setup.py build_ext --inplace > "$RESULTS/build_log.txt" 2>&1 || build_rc=$?
status build_rc "$build_rc"
note "build: rc=$build_rc after $(( $(date +%s) - START )) s (log: build_log.txt)"
if [ "$build_rc" -ne 0 ]; then
  tail -40 "$RESULTS/build_log.txt"
  note "build failed: stopping"
  exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import hydrogen_ops, torch; print("hydrogen_ops from", hydrogen_ops.__file__, "cuda:", torch.cuda.is_available())' 2>&1 | tee -a "$SUMMARY"

# ---- 2. tests ----
STRICT_FILES=(tests/test_cuda.py tests/test_hydragen_op.py tests/test_ops.py tests/test_nan_contract.py tests/test_api.py)
strict=() absent=() ignore=()
for f in "${STRICT_FILES[@]}"; do
  if [ -f "$f" ]; then strict+=("$f"); else absent+=("$f"); fi
  ignore+=("--ignore=$f")
done
status strict_files "${strict[*]}"
status rest_files "tests (without the strict files)"
[ "${#absent[@]}" -eq 0 ] || status strict_note "absent: ${absent[*]}"

PYTEST_WITH_SIGINT='import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)
import pytest; sys.exit(pytest.main(sys.argv[1:]))'
# run_pytest STEP WANT THREADS PYTEST_ARGS...: JUnit XML junit_STEP.xml, verbose log test_STEP_log.txt.
run_pytest() {
  local step=$1 want=$2 threads=$3 rc=0 t s0
  shift 3
  t=$(step_time "$want" "$BENCH_RESERVE")
  if [ "$t" -lt 20 ]; then
    status "${step}_rc" skipped
    status "${step}_note" "skipped: time budget spent"
    note "tests ($step): skipped (time budget spent)"
    return 0
  fi
  s0=$(date +%s)
  # pytest with Python's own SIGINT handler, even in a background lane that inherits SIGINT
  # ignored: the interrupt ends the run normally, so the JUnit XML is written
  OMP_NUM_THREADS="$threads" timeout -s INT -k 20 "$t" "$PY" -c "$PYTEST_WITH_SIGINT" "$@" -v -rfEs \
    -p no:cacheprovider --continue-on-collection-errors --junitxml="$RESULTS/junit_$step.xml" > "$RESULTS/test_${step}_log.txt" 2>&1 || rc=$?
  status "${step}_rc" "$rc"
  status "${step}_s" "$(( $(date +%s) - s0 ))"
  [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || status "${step}_note" "cut off after ${t} s"
  note "tests ($step): rc=$rc in $(( $(date +%s) - s0 )) s (limit ${t} s): $(tail -1 "$RESULTS/test_${step}_log.txt")"
}

# find_sanitizer: compute-sanitizer on PATH, in the CUDA toolkit or in the nvidia pip
# packages next to torch, else nothing.
find_sanitizer() {
  local c site
  for c in "$(command -v compute-sanitizer || true)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
      /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  site=$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2> /dev/null || true)
  if [ -n "$site" ] && [ -d "$site/nvidia" ]; then
    find "$site/nvidia" -maxdepth 4 -name compute-sanitizer -type f -perm -u+x 2> /dev/null | head -1
  fi
}

run_sanitizer() {
  local san tool rc t s0
  san=$(find_sanitizer)
  if [ -z "$san" ]; then
    status sanitizer absent
    status sanitizer_note "compute-sanitizer not found (PATH, CUDA_HOME/bin, /usr/local/cuda, nvidia pip packages)"
    note "compute-sanitizer: not found, skipped"
    return 0
  fi
  status sanitizer ran
  status sanitizer_tool "$san"
  for tool in memcheck racecheck; do
    t=$(step_time 40 "$BENCH_RESERVE")
    if [ "$t" -lt 15 ]; then
      status "sanitizer_${tool}_rc" skipped
      note "compute-sanitizer $tool: skipped (time budget spent)"
      continue
    fi
    rc=0
    s0=$(date +%s)
    # no caching allocator: every tensor is its own allocation, so memcheck sees overruns
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$t" "$san" --tool "$tool" \
      "$PY" benchmarks/sanitizer_cases.py > "$RESULTS/sanitizer_${tool}_log.txt" 2>&1 || rc=$?
    status "sanitizer_${tool}_rc" "$rc"
    status "sanitizer_${tool}_s" "$(( $(date +%s) - s0 ))"
    note "compute-sanitizer $tool: rc=$rc in $(( $(date +%s) - s0 )) s (limit ${t} s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|sanitizer cases' \
      "$RESULTS/sanitizer_${tool}_log.txt" | tr '\n' ' ')"
  done
}

if [[ " $missing " == *" pytest "* ]]; then
  status strict_rc no-pytest
  note "pytest is missing: carry it as a wheel (tests not run, benchmarks not run)"
  exit 1
fi
# Two lanes at once, each with its share of the CPU threads: the CUDA-strict tests, and
# (sanitizer, then the rest of the suite).
if [ "${#strict[@]}" -gt 0 ]; then
  run_pytest strict 150 10 "${strict[@]}" &
else
  status strict_rc skipped
  note "tests (strict): none of ${STRICT_FILES[*]} exists"
  true &
fi
strict_pid=$!
{ run_sanitizer; run_pytest rest 100 6 tests "${ignore[@]}"; } &
rest_pid=$!
wait "$strict_pid" || true
wait "$rest_pid" || true
tail -25 "$RESULTS/test_strict_log.txt" 2> /dev/null || true

if ! "$PY" benchmarks/gpu_record.py tests-ran "$RESULTS/junit_strict.xml" "$RESULTS/test_strict_log.txt"; then
  note "the CUDA-strict tests did not run: benchmarks not run"
  exit 1
fi

# ---- 3. measurements and benchmarks, the record's first, while the budget lasts ----
bench_rc=0
# run_step NAME WANT_SECONDS COMMAND...: runs with stdout to NAME.md, stderr to NAME_log.txt.
run_step() {
  local name=$1 want=$2 rc=0 t s0
  shift 2
  t=$(step_time "$want")
  if [ "$t" -lt 30 ]; then
    status "${name}_rc" skipped
    note "$name: skipped (time budget spent)"
    return 0
  fi
  s0=$(date +%s)
  timeout -k 10 "$t" "$@" > "$RESULTS/$name.md" 2> "$RESULTS/${name}_log.txt" || rc=$?
  status "${name}_rc" "$rc"
  status "${name}_s" "$(( $(date +%s) - s0 ))"
  note "$name: rc=$rc in $(( $(date +%s) - s0 )) s (limit ${t} s; $name.md, log ${name}_log.txt)"
  tail -40 "$RESULTS/$name.md" | tee -a "$SUMMARY" || true
  [ "$rc" -eq 0 ] || bench_rc=$rc
}
run_step launches 45 "$PY" benchmarks/gpu_record.py launches --out "$RESULTS/launches.json"
run_step attention_sweep_cuda 100 "$PY" benchmarks/attention_sweep.py --device cuda --no-flex --no-composed \
  --out "$RESULTS/attention_sweep_cuda.json"
run_step attention_cuda 70 "$PY" benchmarks/attention_cuda.py --out "$RESULTS/attention_cuda.json"
run_step attention_sweep_flex_cuda 100 "$PY" benchmarks/attention_sweep.py --device cuda --flex --no-composed \
  --batches 1024 --prefixes 16384 --out "$RESULTS/attention_sweep_flex_cuda.json"
if [[ " $missing " == *" transformers "* ]]; then
  note "end-to-end: skipped (transformers missing)"
else
  LLAMA=(--device cuda --hidden 4096 --intermediate 11008 --heads 32 --kv-heads 8 --layers 4 --vocab 32000 --kv-limit-gb 60)
  run_step hf_generate_cuda 150 "$PY" benchmarks/hf_generate.py "${LLAMA[@]}" --batches 64 256 \
    --prefixes 1024 4096 16384 --new-tokens 32 --repeats 3 --out "$RESULTS/hf_generate_cuda.json"
  run_step hierarchical_cuda 90 "$PY" benchmarks/hierarchical.py "${LLAMA[@]}" --new-tokens 32 --repeats 3 \
    --out "$RESULTS/hierarchical_cuda.json"
fi

tests_ok=yes
for step in strict rest; do
  case "$(sed -n "s/^${step}_rc=//p" "$STATUS" | tail -1)" in
    0 | skipped) ;;
    *) tests_ok=no ;;
  esac
done
note "== done: build=$build_rc tests_ok=$tests_ok bench=$bench_rc"
[ "$tests_ok" = yes ] && [ "$bench_rc" -eq 0 ]
