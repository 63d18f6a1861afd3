#!/usr/bin/env bash
# Runs every fuzz target for a bounded time from its seed corpus and prints
# one line per target: `fuzz <target>: <execs> execs, <crashes> crashes`.
# A crash, hang (-timeout) or out-of-memory fails the run; its input and log
# are kept under backends/fuzz/artifacts/<target>/.
#
# cargo fuzz needs nightly rustc flags (-Zsanitizer=address, sancov passes):
# the stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
# FUZZ_SECONDS sets the time per target (default 30).
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-30}

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi

# -O: optimised; -a: debug assertions (and overflow checks) stay on.
cargo fuzz build -O -a

failed=0
for target in $(cargo fuzz list); do
    work=$(mktemp -d)
    mkdir -p "$work/corpus" "$work/artifacts"
    # vhost_user_msg: the daemon's threads end after each input returns,
    # and some are still running at exit, which LeakSanitizer mistakes for
    # leaks (the target checks fds instead).
    extra=()
    asan=${ASAN_OPTIONS:-}
    case "$target" in
    vhost_user_msg)
        extra=(-detect_leaks=0)
        asan=${asan:+$asan:}detect_leaks=0
        ;;
    esac
    set +e
    # New inputs go to the scratch corpus; the committed seeds stay as they are.
    # TMPDIR: the daemon's socket and image dir goes away with the scratch dir.
    TMPDIR=$work ASAN_OPTIONS=$asan cargo fuzz run -O -a "$target" "$work/corpus" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/" "${extra[@]}" \
        >"$work/log" 2>&1
    rc=$?
    set -e
    # Executions: the final stats, else the last status line (`#N ...`).
    execs=$(awk '/^stat::number_of_executed_units:/ { n = $2 } END { print n }' "$work/log")
    if [ -z "$execs" ]; then
        execs=$(awk '/^#[0-9]+/ { n = substr($1, 2) } END { print n + 0 }' "$work/log")
    fi
    crashes=$(find "$work/artifacts" -type f | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1
    fi
    echo "fuzz $target: $execs execs, $crashes crashes"
    if [ "$crashes" -ne 0 ]; then
        failed=1
        mkdir -p "artifacts/$target"
        cp "$work/log" "artifacts/$target/"
        cp "$work"/artifacts/* "artifacts/$target/" 2>/dev/null || true
        grep -v '^#' "$work/log" | tail -40
        echo "fuzz $target: reproduce with" \
            "RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a $target backends/fuzz/artifacts/$target/<file>"
    fi
    rm -rf "$work"
done
exit "$failed"
