#!/bin/sh
# Runs every fuzz target for SECS seconds (default 600), ONE AT A TIME under
# nice (the machine is shared), then minimises its corpus in place.
# Usage (from fuzz/): ./run_all.sh [SECS] [target...]
# Needs: cargo install cargo-fuzz --locked. Works on stable Rust: no
# sanitizer (-s none); libFuzzer's coverage instrumentation only.
set -u
SECS=${1:-600}
shift 2>/dev/null || true
TARGETS=${*:-"frame_decode relay_core group state_file segment_recovery"}
mkdir -p logs
nice -n 15 cargo fuzz build -s none || exit 1
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${SECS}s" | tee "logs/$t.log"
    nice -n 15 cargo fuzz run -s none "$t" "corpus/$t" -- \
        -max_total_time="$SECS" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -max_len=4096 \
        -artifact_prefix="artifacts/$t/" >>"logs/$t.log" 2>&1
    echo "exit $?" >>"logs/$t.log"
    nice -n 15 cargo fuzz cmin -s none "$t" "corpus/$t" >>"logs/$t.cmin.log" 2>&1
done
