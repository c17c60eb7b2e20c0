#!/bin/sh
# Runs fuzz targets one after another, each for SECONDS (default 180), on
# one core (in-process; `-jobs=1` would fork one worker that logs to
# fuzz-0.log): new inputs go to corpus/<target>/ (seeds/<target>/ is read
# too), crashes to artifacts/<target>/, libFuzzer's output to
# logs/<target>.log. Usage, from anywhere:
#   fuzz/run.sh [SECONDS] [TARGET...]      (no TARGET: all of them)
#   fuzz/run.sh regressions [TARGET...]    runs regressions/<target>/* once each
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz --locked`.
# Leak detection is off: what LeakSanitizer reports in this Rust code are
# OnceLocks and threads (ureq's resolver) that outlive one input, not bugs.
set -eu
cd "$(dirname "$0")"
secs=${1:-180}
[ $# -gt 0 ] && shift
all="request_line oauth_response provider_http jwt_claims timestamp duration config"
if [ "$secs" = regressions ]; then
    cargo +nightly fuzz build
    status=0
    for t in ${*:-$all}; do
        for f in "regressions/$t"/*; do
            [ -f "$f" ] || continue
            if "target/x86_64-unknown-linux-gnu/release/$t" -detect_leaks=0 "$f" >/dev/null 2>&1; then
                echo "pass  $f"
            else
                echo "FAIL  $f"
                status=1
            fi
        done
    done
    exit $status
fi
targets=${*:-$all}
mkdir -p logs
cargo +nightly fuzz build
status=0
for t in $targets; do
    mkdir -p "corpus/$t" "seeds/$t"
    dict=""
    [ -f "dicts/$t.dict" ] && dict="-dict=dicts/$t.dict"
    echo "== $t: ${secs}s"
    # shellcheck disable=SC2086
    if cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -detect_leaks=0 \
        -print_final_stats=1 $dict >"logs/$t.log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "logs/$t.log" || true
        echo "   corpus: $(ls "corpus/$t" | wc -l) inputs"
    else
        status=1
        echo "   FAILED: see logs/$t.log and artifacts/$t/"
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "logs/$t.log" | head -5 || true
    fi
done
exit $status
