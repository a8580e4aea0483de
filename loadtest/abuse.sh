#!/usr/bin/env bash
# Abuse under load (issue 8): the same normal conversation (100 clients in
# groups of 10, 10 msg/s each, --crypto none) twice against one relay,
# once alone and once while the abuse swarm runs (tests/hostile.rs,
# `abuse_swarm`: 1,000 random-byte connections, 100 logged-in slowloris,
# 1,000 members that never read while being sent messages, a registration
# flood, oversized frames). Relay pinned to core 0; swarm and abusers to
# core 1, the abusers under nice -n 10 so that they do not starve the
# measuring swarm on the same core. Prints both reports, the p99 ratio and the relay's RSS.
#
# Usage: loadtest/abuse.sh [SECS]    (default 30; needs taskset)
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
taskset -c 0 target/release/hermes relay --listen "$ADDR" --data-dir "$OUT/data" \
    --fsync batch --max-registrations-per-sec 1000 --max-frames-per-sec 100000 \
    >"$OUT/relay.log" 2>&1 &
RELAY=$!
trap 'kill $RELAY 2>/dev/null || true; kill ${AB:-} 2>/dev/null || true' EXIT
sleep 1
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$RELAY/status"; }
swarm() { # label
    taskset -c 1 target/release/hermes-loadtest --target hermes --server "$ADDR" \
        --connections 100 --group-size 10 --rate 10 --crypto none \
        --duration "$SECS" --relay-pid "$RELAY" --cache-dir "$OUT/cache-$1" \
        --json "$OUT/$1.json" --quiet >"$OUT/$1.txt" 2>&1 || true
    echo "== $1 (relay RSS $(rss))"
    tail -n 12 "$OUT/$1.txt"
}
swarm baseline
HERMES_ABUSE_ADDR=$ADDR HERMES_ABUSE_SECS=$((SECS + 20)) nice -n 10 taskset -c 1 "$ABUSER" \
    --ignored --exact abuse_swarm --nocapture >"$OUT/abuse.txt" 2>&1 &
AB=$!
sleep 15 # let the abusers connect and register
echo "== abusers connected (relay RSS $(rss))"
swarm abused
wait "$AB" || true
echo "== abusers done (relay RSS $(rss))"
grep '^abuse:' "$OUT/abuse.txt" || tail -n 20 "$OUT/abuse.txt"
kill -0 "$RELAY" && echo "relay still up"
python3 - "$OUT" <<'PY'
import json, sys
d = sys.argv[1]
def p99(name):
    j = json.load(open(f"{d}/{name}.json"))
    def find(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("p99_ms", "p99") and isinstance(v, (int, float)):
                    return v
                r = find(v)
                if r is not None:
                    return r
        return None
    return find(j)
b, a = p99("baseline"), p99("abused")
print(f"p99 baseline {b / 1000:.1f} ms, under abuse {a / 1000:.1f} ms, ratio {a / b:.2f}" if a and b else f"p99: {b} / {a}")
PY
