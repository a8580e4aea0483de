#!/usr/bin/env bash
# Runs the issue's load shapes (1 fan-out, 2 many groups, 3 idle, 4 the
# wide variant of many groups: 10,000 connections at 1 msg/s each) against
# a Hermes relay, mosquitto and redis-server on this machine, side by side,
# and prints a table of figures and ratios (with the swarm's own CPU, the
# share of the run its threads waited for a CPU, and its loop passes:
# p99/max wall time and the longest on-CPU, microseconds).
#
#   loadtest/compare.sh                  # all shapes, all targets
#   SHAPES="1 2" TARGETS="mqtt redis" loadtest/compare.sh
#   QUICK=1 loadtest/compare.sh          # 2 s runs, 2,000 idle connections
#   SWARM_ARGS="--ack-interval 1" TARGETS=hermes SHAPES=4 loadtest/compare.sh
#                                        # extra swarm flags, every target
#
# Each server is started fresh for each shape on a free loopback port,
# pinned to core 0 (taskset), with the swarm pinned to core 1; both are
# stopped afterwards. mosquitto, redis-server and jq are installed with
# apt-get if missing. Hermes is skipped, with a message, while the `hermes`
# binary has no `relay` command. JSON reports and server logs are kept
# under target/loadtest-compare/ (the local disk, not tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."

SHAPES="${SHAPES:-1 2 3 4}"
TARGETS="${TARGETS:-hermes mqtt redis}"
QUICK="${QUICK:-0}"
BROKER_CPU="${BROKER_CPU:-0}"
SWARM_CPU="${SWARM_CPU:-1}"
OUT="${OUT:-target/loadtest-compare}"

if [ "$QUICK" = 1 ]; then
    DUR_FANOUT=2 DUR_GROUPS=2 DUR_IDLE=3 IDLE_CONNS=2000 WIDE_CONNS=2000
else
    DUR_FANOUT=10 DUR_GROUPS=10 DUR_IDLE=30 IDLE_CONNS=19000 WIDE_CONNS=10000
fi

need() { # command, Debian package
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "compare.sh: installing $2" >&2
        apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
    fi
}
need mosquitto mosquitto
need redis-server redis-server
need jq jq
need taskset util-linux
need ss iproute2

# The servers and the swarm each raise to the hard limit (20,000 here).
ulimit -n "$(ulimit -Hn)"

rm -rf "$OUT" && mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cargo build --release --bin hermes --bin hermes-loadtest >&2
SWARM="$PWD/target/release/hermes-loadtest"
HERMES="$PWD/target/release/hermes"

HAVE_RELAY=0
if "$HERMES" relay --help >/dev/null 2>&1; then
    HAVE_RELAY=1
fi

PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        if [ -z "$(ss -Htln "sport = :$p")" ]; then
            echo "$p"
            return
        fi
    done
    echo "compare.sh: no free port found" >&2
    exit 1
}

wait_port() { # port
    for _ in $(seq 1 100); do
        [ -n "$(ss -Htln "sport = :$1")" ] && return 0
        sleep 0.1
    done
    echo "compare.sh: nothing listening on port $1" >&2
    return 1
}

SERVER_PID=""
start_server() { # target port dir
    local t="$1" port="$2" dir="$3"
    mkdir -p "$dir"
    case "$t" in
    mqtt)
        cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_dest file $dir/mosquitto.log
max_keepalive 65535
set_tcp_nodelay true
EOF
        taskset -c "$BROKER_CPU" mosquitto -c "$dir/mosquitto.conf" >"$dir/stdout.log" 2>&1 &
        ;;
    redis)
        taskset -c "$BROKER_CPU" redis-server --port "$port" --bind 127.0.0.1 \
            --save '' --appendonly no --protected-mode no --daemonize no \
            --maxclients 19968 --dir "$dir" --logfile "$dir/redis.log" \
            >"$dir/stdout.log" 2>&1 &
        ;;
    hermes)
        taskset -c "$BROKER_CPU" "$HERMES" relay --listen "127.0.0.1:$port" \
            --data-dir "$dir/data" --fsync batch \
            --max-registrations-per-sec 1000000 --max-frames-per-sec 100000000 \
            --max-accepts-per-sec 0 \
            >"$dir/stdout.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$port"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

shape_args() { # shape
    case "$1" in
    1) echo "--connections 1000 --group-size 1000 --senders 1 --window 16 --duration $DUR_FANOUT" ;;
    # 1,000 senders x 22.2222 msg/s x 9 receivers = 200,000 deliveries/s offered.
    2) echo "--connections 1000 --group-size 10 --rate 22.2222 --duration $DUR_GROUPS" ;;
    3) echo "--connections $IDLE_CONNS --group-size 10 --idle --duration $DUR_IDLE --connect-timeout 120" ;;
    4) echo "--connections $WIDE_CONNS --group-size 10 --rate 1 --duration $DUR_GROUPS --connect-timeout 120" ;;
    esac
}

shape_name() {
    case "$1" in
    1) echo "fan-out: 1 group of 1,000, 1 sender, window 16" ;;
    2) echo "many groups: 100 x 10, open loop, 200k deliveries/s offered" ;;
    3) echo "idle: $IDLE_CONNS connections held ${DUR_IDLE} s" ;;
    4) echo "wide: $WIDE_CONNS connections in groups of 10, 1 msg/s each" ;;
    esac
}

for shape in $SHAPES; do
    for t in $TARGETS; do
        if [ "$t" = hermes ] && [ "$HAVE_RELAY" = 0 ]; then
            echo "compare.sh: skipping Hermes: this build's \`hermes\` has no \`relay\` command yet" >&2
            continue
        fi
        dir="$OUT/shape$shape-$t"
        port="$(free_port)"
        start_server "$t" "$port" "$dir"
        echo "== shape $shape ($(shape_name "$shape")) against $t on port $port" >&2
        # shellcheck disable=SC2046
        taskset -c "$SWARM_CPU" "$SWARM" --target "$t" --server "127.0.0.1:$port" \
            --relay-pid "$SERVER_PID" --payload 100 --crypto none --quiet \
            --json "$dir/report.json" $(shape_args "$shape") ${SWARM_ARGS:-} >"$dir/swarm.log" 2>&1 || true
        stop_server
        if [ ! -s "$dir/report.json" ]; then
            echo "compare.sh: no report for shape $shape on $t; see $dir/swarm.log" >&2
            tail -5 "$dir/swarm.log" >&2 || true
        fi
    done
done

j() { # file jq-expression
    [ -s "$1" ] && jq -r "$2 // \"-\"" "$1" 2>/dev/null || echo "-"
}

ratio() { # a b
    awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else printf "-" }'
}

echo
echo "Load-test comparison on $(nproc) cores ($(date -u +%Y-%m-%dT%H:%MZ)); servers on core $BROKER_CPU, swarm on core $SWARM_CPU"
for shape in $SHAPES; do
    echo
    echo "Shape $shape: $(shape_name "$shape")"
    if [ "$shape" = 3 ]; then
        printf "%-7s %10s %10s %9s %12s %12s %10s %8s\n" target connected connects/s errors rss_before rss_after KiB/conn cpu%
    else
        printf "%-7s %12s %9s %9s %9s %9s %9s %8s %6s %6s %6s %6s %16s\n" target deliveries/s p50_us p99_us p999_us max_us missing dups errors cpu% swarm% wait% pass_p99/max/cpu
    fi
    for t in $TARGETS; do
        f="$OUT/shape$shape-$t/report.json"
        [ -s "$f" ] || { printf "%-7s %s\n" "$t" "(not run)"; continue; }
        if [ "$shape" = 3 ]; then
            printf "%-7s %10s %10s %9s %12s %12s %10s %8s\n" "$t" "$(j "$f" .connected)" "$(j "$f" .connects_per_sec)" \
                "$(j "$f" .errors)" "$(j "$f" .relay_rss_kib_before)" "$(j "$f" .relay_rss_kib_after)" \
                "$(j "$f" '.relay_rss_kib_per_connection | if . == null then null else (. * 100 | round / 100) end')" \
                "$(j "$f" '.relay_cpu_pct | if . == null then null else round end')"
        else
            printf "%-7s %12s %9s %9s %9s %9s %9s %8s %6s %6s %6s %6s %16s\n" "$t" "$(j "$f" .deliveries_per_sec)" \
                "$(j "$f" .latency_us.p50)" "$(j "$f" .latency_us.p99)" "$(j "$f" .latency_us.p999)" \
                "$(j "$f" .latency_us.max)" "$(j "$f" .missing)" "$(j "$f" .duplicates)" "$(j "$f" .errors)" \
                "$(j "$f" '.relay_cpu_pct | if . == null then null else round end')" \
                "$(j "$f" '.swarm_cpu_pct | if . == null then null else round end')" \
                "$(j "$f" '.swarm_runq_wait_pct | if . == null then null else (. * 10 | round / 10) end')" \
                "$(j "$f" '.swarm_pass_us | if . == null then null else "\(.p99 | round)/\(.max | round)/\(.cpu.max | round)" end')"
        fi
    done
    h="$OUT/shape$shape-hermes/report.json"
    if [ -s "$h" ]; then
        for other in mqtt redis; do
            o="$OUT/shape$shape-$other/report.json"
            [ -s "$o" ] || continue
            if [ "$shape" = 3 ]; then
                echo "  hermes/$other: RSS per connection $(ratio "$(j "$h" .relay_rss_kib_per_connection)" "$(j "$o" .relay_rss_kib_per_connection)")x"
            else
                echo "  hermes/$other: deliveries/s $(ratio "$(j "$h" .deliveries_per_sec)" "$(j "$o" .deliveries_per_sec)")x, p99 $(ratio "$(j "$h" .latency_us.p99)" "$(j "$o" .latency_us.p99)")x"
            fi
        done
    fi
done
echo
echo "Reports: $OUT/shape*/report.json"
