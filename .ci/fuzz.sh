#!/usr/bin/env bash
# Runs the atheris fuzz harnesses in fuzz/ for a bounded time and reports executions and
# crashes (zero or it fails).
#
#   .ci/fuzz.sh                       # FUZZ_SECONDS=60 in all, split between the harnesses
#   FUZZ_SECONDS=3600 .ci/fuzz.sh     # by hand: an hour
#   FUZZ_ONLY=weights .ci/fuzz.sh     # one harness
#   FUZZ_NATIVE=0 .ci/fuzz.sh         # skip the clang build (Python-level coverage only)
#   FUZZ_SEED=1 .ci/fuzz.sh           # libFuzzer's -seed (CI fixes it so a red run replays)
#
# With clang on the PATH (apt-get install clang), metalearn._core is rebuilt in a
# throw-away copy of the tree with -fsanitize=fuzzer-no-link,address,undefined, and the
# harnesses run with a libFuzzer+ASan runtime preloaded: coverage-guided on the C code,
# and every out-of-bounds access or undefined behaviour is a crash. Without clang they
# run against the installed extension with coverage of the Python side only (a segfault
# is still caught, a silent overrun is not). The corpus in fuzz/corpus/<name>/ is read as
# seeds; new inputs go to a temporary folder (FUZZ_KEEP_CORPUS=1 merges them back).
# Crashing inputs are copied to fuzz/crashes/ (reproduce: python fuzz/fuzz_<name>.py FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
SECONDS_TOTAL=${FUZZ_SECONDS:-60}
NATIVE=${FUZZ_NATIVE:-1}

"$PY" -c "import atheris" 2>/dev/null || "$PY" -m pip install -q atheris

HARNESSES=()
for h in weights convert memory; do
    [ -e "fuzz/fuzz_$h.py" ] || continue
    [ -n "${FUZZ_ONLY:-}" ] && [ "$FUZZ_ONLY" != "$h" ] && continue
    HARNESSES+=("$h")
done
PER=$(( SECONDS_TOTAL / ${#HARNESSES[@]} ))
[ "$PER" -ge 1 ] || PER=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/metalearn-fuzz.XXXXXX")
[ -n "${FUZZ_KEEP_WORK:-}" ] || trap 'rm -rf "$WORK"' EXIT
PRELOAD=""
PYPATH=""
MODE="python-coverage (installed extension)"
if [ "$NATIVE" = 1 ] && command -v clang >/dev/null 2>&1; then
    echo "== building an instrumented metalearn._core (clang, fuzzer-no-link + ASan + UBSan)"
    t0=$(date +%s)
    SRC="$WORK/tree"
    mkdir -p "$SRC"
    git ls-files -co --exclude-standard -z | grep -zv '\.so$' | xargs -0 cp --parents -t "$SRC" 2>/dev/null || true
    rm -f "$SRC"/metalearn/_core*.so
    (cd "$SRC" && CC=clang LDSHARED="clang -shared" \
        METALEARN_CFLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1" \
        METALEARN_LDFLAGS="-fsanitize=fuzzer-no-link,address,undefined" \
        "$PY" setup.py -q build_ext --inplace -j "$(nproc)" >"$WORK/build.log" 2>&1) \
        || { tail -30 "$WORK/build.log"; exit 1; }
    # libFuzzer and ASan in one preloaded library, as atheris documents for native code
    RT=$(dirname "$(clang -print-file-name=libclang_rt.asan-x86_64.a)")
    cp "$RT/libclang_rt.asan-x86_64.a" "$WORK/asan.a"
    ar d "$WORK/asan.a" asan_preinit.cpp.o 2>/dev/null || true
    clang -shared -o "$WORK/asan_with_fuzzer.so" -Wl,--whole-archive "$WORK/asan.a" \
        "$RT/libclang_rt.fuzzer_no_main-x86_64.a" -Wl,--no-whole-archive -lpthread -ldl -lstdc++ -lm
    PRELOAD="$WORK/asan_with_fuzzer.so"
    PYPATH="$SRC"
    MODE="native coverage + ASan/UBSan (clang build, $(( $(date +%s) - t0 )) s to build)"
fi
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:malloc_limit_mb=2048:abort_on_error=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
echo "== fuzzing: ${#HARNESSES[@]} harness(es) x ${PER} s; mode: $MODE"

total_execs=0
total_crashes=0
summary=""
for h in "${HARNESSES[@]}"; do
    mkdir -p "$WORK/corpus-$h" "$WORK/art-$h"
    log="$WORK/$h.log"
    set +e
    PYTHONPATH="$PYPATH" LD_PRELOAD="$PRELOAD" "$PY" "fuzz/fuzz_$h.py" \
        "$WORK/corpus-$h" "fuzz/corpus/$h" -max_total_time="$PER" -print_final_stats=1 \
        -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$WORK/art-$h/" \
        ${FUZZ_SEED:+-seed="$FUZZ_SEED"} >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    cov=$(grep -oE 'DONE +cov: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
    crashes=$(find "$WORK/art-$h" -type f | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
    if [ "$crashes" -ne 0 ]; then
        mkdir -p fuzz/crashes
        cp "$WORK/art-$h"/* fuzz/crashes/ 2>/dev/null || true
        grep -v "INFO: Instrumenting" "$log" | tail -60
    fi
    if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then cp -n "$WORK/corpus-$h"/* "fuzz/corpus/$h/" 2>/dev/null || true; fi
    line=$(printf "%-8s %10s execs  %6s exec/s  cov %-6s crashes %s" "$h" "${execs:-0}" "${eps:-0}" "${cov:--}" "$crashes")
    echo "   $line"
    summary+="$line"$'\n'
    total_execs=$(( total_execs + ${execs:-0} ))
    total_crashes=$(( total_crashes + crashes ))
done
echo "== fuzz total: $total_execs executions, $total_crashes crash(es)"
[ "$total_crashes" -eq 0 ]
