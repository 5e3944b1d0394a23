#!/usr/bin/env bash
# STUN Binding throughput: natkit-stun against coturn (`turnserver --stun-only`),
# same machine, same load generator (`natkit bench stun`), one run.
#
#   bash scripts/bench-stun.sh
#
# Builds release binaries, starts both servers on loopback, runs the benchmark
# against each ROUNDS times, alternating which goes first, and prints the
# median responses/s of each and their ratio (the goal in docs/PERFORMANCE.md:
# natkit-stun >= 1.5x coturn). Both servers are stopped by PID on exit.
#
# Settings (environment): DURATION=10s WARMUP=2s CONCURRENCY=256 THREADS=2
# SOCKETS=4 ROUNDS=3 COTURN_PORT=35478 NATKIT_PORT=35479 FINGERPRINT=0
# WAIT_IDLE=0 (seconds to wait for an idle machine before each measurement).
# Only loopback is loaded. Needs coturn (apt-get install -y coturn).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-256}
THREADS=${THREADS:-2}
SOCKETS=${SOCKETS:-4}
ROUNDS=${ROUNDS:-3}
COTURN_PORT=${COTURN_PORT:-35478}
NATKIT_PORT=${NATKIT_PORT:-35479}
FINGERPRINT=${FINGERPRINT:-0}

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
need_coturn

build_release natkit-stun natkit-cli
STUN=$target/release/natkit-stun
NATKIT=$target/release/natkit

need_free_udp_ports "$COTURN_PORT" "$NATKIT_PORT"

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# coturn without its packaged config (-n), STUN only, loopback only; its
# default of one UDP thread per core is left alone, like natkit-stun's.
turnserver -n --stun-only --listening-ip 127.0.0.1 --listening-port "$COTURN_PORT" \
    --pidfile="$tmp/turn.pid" --log-file="$tmp/turn.log" --simple-log \
    --no-cli --no-tls --no-dtls >"$tmp/turn.out" 2>&1 &
pids+=($!)
coturn_pid=$!
"$STUN" --listen "127.0.0.1:$NATKIT_PORT" >"$tmp/natkit.log" 2>&1 &
pids+=($!)
natkit_pid=$!
wait_ready "$coturn_pid" "$COTURN_PORT" "$tmp/turn.out"
wait_ready "$natkit_pid" "$NATKIT_PORT" "$tmp/natkit.log"

idle_pct=$(idle_pct)

model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
say "machine: $(nproc) cores, ${model:-unknown CPU}, Linux $(uname -r), ${idle_pct}% idle before the run"
say "coturn: $(turnserver --version 2>/dev/null | head -1) (pid $coturn_pid, 127.0.0.1:$COTURN_PORT); natkit-stun: pid $natkit_pid, 127.0.0.1:$NATKIT_PORT"
((idle_pct >= 90)) || say "warning: the machine is busy; figures will be low and noisy"

args=(--duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONCURRENCY"
    --threads "$THREADS" --sockets "$SOCKETS" --json)
[[ $FINGERPRINT == 1 ]] && args+=(--fingerprint)
say "load: natkit bench stun 127.0.0.1:PORT ${args[*]}"

field() { grep -o "\"$2\": *[0-9.e+-]*" "$1" | head -1 | sed 's/.*: *//'; }
field_in() { grep -A6 '"latency_us"' "$1" | grep -o "\"$2\": *[0-9.e+-]*" | sed 's/.*: *//'; }

run_one() {
    local name=$1 port=$2 round=$3 out="$tmp/$1.$3.json"
    wait_idle
    local idle
    idle=$(idle_pct)
    "$NATKIT" bench stun "127.0.0.1:$port" "${args[@]}" >"$out"
    printf '    round %d %-12s %10.0f responses/s  lost %s  p50 %s us  p99 %s us  generator CPU %s cores  (idle before: %s%%)\n' \
        "$round" "$name" "$(field "$out" responses_per_sec)" "$(field "$out" lost)" \
        "$(field_in "$out" p50)" "$(field_in "$out" p99)" "$(field "$out" client_cpu_cores)" "$idle"
    field "$out" responses_per_sec >>"$tmp/$name.rps"
}

for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then
        run_one coturn "$COTURN_PORT" "$r"
        run_one natkit-stun "$NATKIT_PORT" "$r"
    else
        run_one natkit-stun "$NATKIT_PORT" "$r"
        run_one coturn "$COTURN_PORT" "$r"
    fi
done

median() { sort -g "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
c=$(median "$tmp/coturn.rps")
k=$(median "$tmp/natkit-stun.rps")
ratio=$(awk -v k="$k" -v c="$c" 'BEGIN {printf "%.2f", (c > 0) ? k / c : 0}')
echo
say "median over $ROUNDS rounds:"
printf '    coturn       %10.0f responses/s\n' "$c"
printf '    natkit-stun  %10.0f responses/s\n' "$k"
printf '    ratio        %10s x   (goal: >= 1.5)\n' "$ratio"
