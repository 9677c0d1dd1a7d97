#!/usr/bin/env bash
# Runs fuzz targets one after another, each for SECONDS of unpaused time, on one core:
#
#   fuzz/run_all.sh SECONDS [TARGET...]        (default: every target)
#
# Optional environment: RUNS=N stops each target after N executions (libFuzzer's -runs;
# SECONDS stays the cap), MAX_LEN=BYTES bounds the inputs (default 262144; libFuzzer's
# own default is 4096), EXTRA='...' adds libFuzzer flags, CORPUS=DIR replaces
# fuzz/corpus/<target> (for one target: e.g. a corpus of its small inputs).
#
# Built first with `RUSTC_BOOTSTRAP=1 cargo fuzz build ...` (see README.md); the binaries
# are run directly so no rebuild happens between targets. Each run is one libFuzzer
# process (-jobs=1, nice 10), with a 2 GiB RSS limit and a 10 s per-input timeout, so a
# hostile input that allocates or loops is a finding instead of a machine-wide problem.
# While /work/notes/pause exists (a benchmark is running on the shared machine) the
# fuzzer's process group is stopped (SIGSTOP) and resumed afterwards; the paused time
# is not counted. Logs go to fuzz/logs/<target>.log; findings to fuzz/artifacts/<target>/.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="$1"; shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(keras_json h5 keras_archive npz npy structural)
bin="${CARGO_TARGET_DIR:-/work/target-fuzz/fuzz}/x86_64-unknown-linux-gnu/release"
export TMPDIR="${TMPDIR:-/dev/shm}"
mkdir -p "$here/logs"
for t in "${targets[@]}"; do
    while test -e /work/notes/pause; do sleep 30; done
    corpus="${CORPUS:-$here/corpus/$t}"
    mkdir -p "$here/artifacts/$t" "$corpus" "$here/logs/$t"
    # -max_total_time is wall clock; we stop the fuzzer ourselves after `seconds` of
    # running time, so pauses do not eat the budget.
    (cd "$here/logs/$t" && exec setsid nice -n 10 "$bin/$t" "$corpus" \
        -jobs=1 -workers=1 -rss_limit_mb=2048 -timeout=10 -max_len="${MAX_LEN:-262144}" ${RUNS:+-runs=$RUNS} ${EXTRA:-} \
        -print_final_stats=1 -artifact_prefix="$here/artifacts/$t/" \
        > "$here/logs/$t.log" 2>&1) &
    pid=$!
    sleep 1
    pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')
    [ -n "$pgid" ] || pgid=$pid
    ran=0
    while [ "$ran" -lt "$seconds" ] && kill -0 "$pid" 2>/dev/null; do
        if test -e /work/notes/pause; then
            kill -STOP -- "-$pgid" 2>/dev/null
            while test -e /work/notes/pause; do sleep 10; done
            kill -CONT -- "-$pgid" 2>/dev/null
        fi
        sleep 5; ran=$((ran + 5))
    done
    kill -INT -- "-$pgid" 2>/dev/null
    wait "$pid" 2>/dev/null
    # The final stats (printed on SIGINT too) give the count; if missing (a crash), the
    # last status line, which starts with #<executions>, is a lower bound.
    execs=$(grep -h 'stat::number_of_executed_units' "$here/logs/$t"/fuzz-*.log 2>/dev/null | tail -1 | awk '{print $2}')
    [ -n "$execs" ] || execs=">=$(grep -ho '^#[0-9]*' "$here/logs/$t"/fuzz-*.log 2>/dev/null | tail -1)"
    echo "== $t ($(date -u +%FT%TZ), max_len ${MAX_LEN:-262144}${EXTRA:+, $EXTRA}): ran ${ran}s; executions ${execs/\#/}; artifacts: $(ls "$here/artifacts/$t" | wc -l)" \
        | tee -a "$here/logs/summary.txt"
done
