#!/usr/bin/env bash
# Builds and runs vaec's fuzz targets for a bounded time each; exits non-zero on any crash,
# leak, sanitizer report, out-of-memory or timeout (libFuzzer's own exit status).
#
#   bash tests/fuzz/run.sh [SECONDS] [TARGET...]      # default: 30 s each; all targets
#
# Targets: model_file (libFuzzer + ASan/UBSan/LeakSanitizer on the C core's reader and every
# kind's loader), idx, mat, images (atheris on vaec.datasets; needs `pip install atheris`).
# Each runs from the committed seeds (tests/fuzz/corpus/<target>) into a scratch corpus, so
# the repository is not changed; a crashing input is written to $FUZZ_OUT (default: a
# temporary folder) and its path printed. Needs clang with its libFuzzer runtime
# (Debian: apt-get install clang). FUZZ_JOBS=N runs N copies of the C target in parallel.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SECS=${1:-30}
shift || true
TARGETS=${*:-model_file idx mat images}
OUT=${FUZZ_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
status=0

run() {   # name, command...: run it, print its closing statistics, keep its status
    local name=$1; shift
    echo "-- fuzz $name (${SECS} s)"
    if "$@" >"$OUT/$name.log" 2>&1; then
        grep -E "DONE|^Done [0-9]+ runs" "$OUT/$name.log" | tail -2
    else
        echo "FAILED: fuzz target $name; its log: $OUT/$name.log"
        grep -E -A30 "ERROR|Uncaught|runtime error|Test unit written" "$OUT/$name.log" | head -60
        status=1
    fi
}

for t in $TARGETS; do
    mkdir -p "$OUT/corpus-$t"
    case $t in
    model_file)
        clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Icsrc \
            tests/fuzz/model_file.c csrc/*.c -lm -lpthread -o "$OUT/model_file" 2>"$OUT/build.log" ||
            { cat "$OUT/build.log"; exit 1; }
        # -malloc_limit_mb: a file of a few KB must not make the loader allocate a GB
        run model_file "$OUT/model_file" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
            -max_len=8192 -print_final_stats=1 -artifact_prefix="$OUT/model_file-" ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} \
            "$OUT/corpus-$t" tests/fuzz/corpus/model_file
        ;;
    idx|mat|images)
        run "$t" "$PY" tests/fuzz/python_readers.py "$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
            -max_len=4096 -print_final_stats=1 -artifact_prefix="$OUT/$t-" "$OUT/corpus-$t" "tests/fuzz/corpus/$t"
        ;;
    *) echo "unknown fuzz target $t"; exit 2 ;;
    esac
done
exit $status
