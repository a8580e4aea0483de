#!/usr/bin/env bash
# Abuse under load (issue 8): the same normal conversation (100 clients in
# groups of 10, 10 msg/s each, --crypto none) twice against one relay,
# once alone and once while the abuse swarm runs (tests/hostile.rs,
# `abuse_swarm`: 1,000 random-byte connections, 100 logged-in slowloris,
# 1,000 members that never read while being sent messages, a registration
# flood, oversized frames).
#
# Set-up: a first relay with registrations lifted to 1,000/s registers the
# accounts the run needs (the swarm's 100, the abusers' 1,101) and the
# abusers' 1,001-member group, then stops. The measured relay restarts on
# the same data directory with every limit at its default (registrations
# 60 a minute, 2,000 frames/s per connection...): the swarm and the
# abusers log in, and the registration flood meets the production limit.
#
# Cores: relay on core 0; swarm and abusers on core 1, the abusers under
# SCHED_IDLE (`chrt --idle`) so that they run only when the measuring swarm
# does not need the core (they get the rest of it: core 1 is far from
# saturated, and what each abuser achieved is printed). CPU seconds of the
# relay, the swarm and the abusers over each phase are printed too, and
# from the relay's metrics the loop passes per second that took over 0.25,
# 1, 4 and 16 ms (what a logged-in client's frame can wait behind).
# HERMES_BIN overrides the relay binary (to compare builds).
#
# Usage: loadtest/abuse.sh [SECS]    (default 30; needs taskset and chrt)
set -euo pipefail
SECS=${1:-30}
cd "$(dirname "$0")/.."
OUT=${OUT:-target/abuse}
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release --bin hermes --bin hermes-loadtest >&2
cargo test --release --test hostile --no-run >&2
ABUSER=$(ls -t target/release/deps/hostile-* | grep -v '\.d$' | head -1)
PORT=$((20000 + RANDOM % 12000))
ADDR=127.0.0.1:$PORT
METRICS=127.0.0.1:$((PORT + 1))
BIN=${HERMES_BIN:-target/release/hermes}
export HERMES_ABUSE_ADDR=$ADDR HERMES_ABUSE_TAG=$$
RELAY=
AB=
trap 'kill $RELAY 2>/dev/null || true; kill $AB 2>/dev/null || true' EXIT
relay() { # log, extra flags...
    local log=$1
    shift
    taskset -c 0 "$BIN" relay --listen "$ADDR" --data-dir "$OUT/data" \
        --fsync batch "$@" >"$log" 2>&1 &
    RELAY=$!
    for _ in $(seq 50); do
        grep -q "listening" "$log" 2>/dev/null && return
        sleep 0.1
    done
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$RELAY/status"; }
swarm() { # label secs
    taskset -c 1 target/release/hermes-loadtest --target hermes --server "$ADDR" \
        --connections 100 --group-size 10 --rate 10 --crypto none \
        --duration "$2" --relay-pid "$RELAY" --cache-dir "$OUT/cache" \
        --json "$OUT/$1.json" --quiet >"$OUT/$1.txt" 2>&1 || true
}
passes() { # loop passes: total, then over 0.25 / 1 / 4 / 16 ms
    python3 - "$METRICS" <<'PY'
import sys, urllib.request
m = {}
try:
    for l in urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode().splitlines():
        if l.startswith("hermes_poll_calls_total ") or l.startswith("hermes_loop_slow_passes_total"):
            k, v = l.rsplit(" ", 1)
            m[k] = int(v)
except OSError:
    pass
print(m.get("hermes_poll_calls_total", 0), *(m.get(f'hermes_loop_slow_passes_total{{over_us="{t}"}}', 0) for t in (250, 1000, 4000, 16000)))
PY
}
measure() { # label: runs the swarm, reports CPU of relay / swarm / abusers
    local r0 a0 r1 a1 t0 t1 p0 p1
    p0=$(passes)
    r0=$(ticks "$RELAY")
    a0=$( [ -n "$AB" ] && ticks "$AB" || echo 0)
    t0=$(date +%s.%N)
    swarm "$1" "$SECS"
    t1=$(date +%s.%N)
    r1=$(ticks "$RELAY")
    a1=$( [ -n "$AB" ] && ticks "$AB" || echo 0)
    p1=$(passes)
    echo "== $1 (relay RSS $(rss), load $(cut -d' ' -f1-3 /proc/loadavg))"
    grep -E 'latency_us|relay_cpu_pct|swarm_cpu_pct|delivered|missing|errors:' "$OUT/$1.txt" || tail -n 5 "$OUT/$1.txt"
    awk -v r=$((r1 - r0)) -v a=$((a1 - a0)) -v t0="$t0" -v t1="$t1" 'BEGIN {
        printf "   cpu over %.0f s: relay %.0f%% of core 0, abusers %.0f%% of core 1\n",
            t1 - t0, r / (t1 - t0), a / (t1 - t0) }'
    awk -v p0="$p0" -v p1="$p1" -v t0="$t0" -v t1="$t1" 'BEGIN {
        split(p0, a, " "); split(p1, b, " "); d = t1 - t0
        printf "   loop passes/s %.0f, over 0.25 ms %.1f/s, over 1 ms %.1f/s, over 4 ms %.2f/s, over 16 ms %.2f/s\n",
            (b[1] - a[1]) / d, (b[2] - a[2]) / d, (b[3] - a[3]) / d, (b[4] - a[4]) / d, (b[5] - a[5]) / d }'
}

# 1. Set-up relay: accounts and the abusers' group.
relay "$OUT/setup.log" --max-registrations-per-sec 1000
swarm setup 1
HERMES_ABUSE_PHASE=setup taskset -c 1 "$ABUSER" --ignored --exact abuse_swarm --nocapture \
    >"$OUT/abuse-setup.txt" 2>&1
kill -TERM "$RELAY" && wait "$RELAY" || true

# 2. The measured relay: default limits.
relay "$OUT/relay.log" --metrics "$METRICS"
swarm warmup 2 # log in once so both phases start alike
measure baseline
HERMES_ABUSE_PHASE=run HERMES_ABUSE_SECS=$((SECS + 20)) chrt --idle 0 taskset -c 1 "$ABUSER" \
    --ignored --exact abuse_swarm --nocapture >"$OUT/abuse.txt" 2>&1 &
AB=$!
sleep 15 # let the abusers log in and get going
echo "== abusers connected (relay RSS $(rss))"
measure abused
wait "$AB" || true
AB=
echo "== abusers done (relay RSS $(rss))"
grep '^abuse:' "$OUT/abuse.txt" || tail -n 20 "$OUT/abuse.txt"
kill -0 "$RELAY" && echo "relay still up"
python3 - "$OUT" <<'PY'
import json, sys
d = sys.argv[1]
def p99(name):
    return json.load(open(f"{d}/{name}.json"))["latency_us"]["p99"]
b, a = p99("baseline"), p99("abused")
print(f"p99 baseline {b / 1000:.2f} ms, under abuse {a / 1000:.2f} ms, ratio {a / b:.2f}")
PY
