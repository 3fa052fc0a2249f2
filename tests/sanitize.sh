#!/usr/bin/env bash
# Builds the CPU extension with AddressSanitizer and UndefinedBehaviorSanitizer in a
# separate copy of the sources (build/sanitize/, so the normal in-place build is left
# alone), then runs under them: the CPU op tests, the API tests but torch.compile (bad
# input, opcheck, merge properties), the threads test, a fuzz sample of the core group over
# every CPU ISA variant, and the NaN-contract group (run for memory errors only: its
# results are checked by tests/fuzz/test_fuzz.py).
#
#   tests/sanitize.sh                 # about 3 minutes to build on 2 cores, then the runs
#   PYTHON=/path/to/python FUZZ_CASES=2000 tests/sanitize.sh
#
# Any ASan or UBSan report aborts the process, so the script fails on the first one.
# libstdc++ is preloaded together with libasan: without it ASan's __cxa_throw interceptor
# finds no real function at start-up and every C++ exception (each ValueError the ops
# raise) aborts the process.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
WORK="${SANITIZE_DIR:-$ROOT/build/sanitize}"
SRC="$WORK/src"
FUZZ_CASES="${FUZZ_CASES:-1000}"
CONTRACT_CASES="${CONTRACT_CASES:-300}"
CXX="${CXX:-c++}"

echo "==> copying the sources to $SRC"
mkdir -p "$SRC"
rm -rf "$SRC/csrc" "$SRC/hydrogen_ops" "$SRC/tests"
# -p keeps modification times, so the sanitized build is incremental like the normal one.
cp -rp "$ROOT/csrc" "$ROOT/hydrogen_ops" "$ROOT/tests" "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/README.md" "$SRC/"
find "$SRC" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +

SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
echo "==> building the CPU extension with $SAN_FLAGS (log: $WORK/build.log)"
if ! (cd "$SRC" && HYDROGEN_CPU_ONLY=1 CFLAGS="$SAN_FLAGS" LDFLAGS="$SAN_FLAGS" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" setup.py build_ext --inplace --build-temp "$WORK/tmp") > "$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log"
  echo "sanitized build failed (full log: $WORK/build.log)"
  exit 1
fi
SO="$(ls "$SRC"/hydrogen_ops/_C*.so)"
if ! nm -D "$SO" | grep -q __asan_report; then
  echo "$SO is not instrumented: the sanitizer flags did not reach the compiler"
  exit 1
fi

LIBASAN="$("$CXX" -print-file-name=libasan.so)"
LIBSTDCXX="$("$CXX" -print-file-name=libstdc++.so)"
for lib in "$LIBASAN" "$LIBSTDCXX"; do
  # -print-file-name echoes the bare name when the compiler does not have the library.
  if [ ! -e "$lib" ]; then
    echo "$CXX has no $lib: install its sanitizer runtime (e.g. libasan8 for GCC 12) or set CXX"
    exit 1
  fi
done
export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
# Python and torch allocate for the life of the process: leak reports would be noise.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:check_initialization_order=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
cd "$SRC"
"$PY" -c "import hydrogen_ops, sys; f = hydrogen_ops.__file__; print('hydrogen_ops from', f); sys.exit(not f.startswith('$SRC'))"

echo "==> op, API and threads tests under ASan + UBSan"
"$PY" -m pytest tests/test_ops.py tests/test_api.py tests/test_threads.py -k "not torch_compile" -q -p no:cacheprovider
echo "==> fuzz, core group: $FUZZ_CASES cases over every CPU ISA variant"
"$PY" tests/fuzz/run_fuzz.py --group core --cases "$FUZZ_CASES"
echo "==> fuzz, NaN-contract group: $CONTRACT_CASES cases"
"$PY" tests/fuzz/run_fuzz.py --group nan_contract --cases "$CONTRACT_CASES"
echo "==> sanitizers: no report"
